// Flow aggregates and pod events (flows/) as InfluxDB points: measurements
// signet_flow and signet_pod_event (docs/influxdb.md).
#pragma once

#include <string>
#include <vector>

#include "export/line_protocol.h"
#include "flows/flow_table.h"

namespace signet::exporter {

std::vector<Point> flow_points(const std::string& node, const std::vector<flows::Aggregate>& aggregates,
                               const std::vector<flows::PodEvent>& events);

}  // namespace signet::exporter
