// Fixed test credentials for the identity fuzz target and its corpus seeds:
// a CA of trust domain cluster.local (2024-01-01, 20 years) and two node
// certificates (node-a, node-b; 24 h from 2025-12-31T12:00:00Z, around the
// fuzz clock: verifiers refuse node certificates over kMaxNodeCertLifetime),
// made by the library itself (Authority::create / issue). TEST ONLY: these
// keys are public.
#pragma once

namespace signet::identity::testkeys {

// The fuzz target's clock: 2026-01-01T00:00:00Z, in ms since the epoch.
inline constexpr long long kNowMs = 1767225600000LL;

inline constexpr const char* kCaPem = R"(-----BEGIN CERTIFICATE-----
MIIB+jCCAaCgAwIBAgIQc37FyiwQPhgSdoIMaEZklzAKBggqhkjOPQQDAjBKMRYw
FAYDVQQKDA1jbHVzdGVyLmxvY2FsMTAwLgYDVQQDDCdzaWduZXQgYXV0aG9yaXR5
IGNsdXN0ZXIubG9jYWwgZmFhZmMxZmMwHhcNMjQwMTAxMDAwMDAwWhcNNDMxMjI3
MDAwMDAwWjBKMRYwFAYDVQQKDA1jbHVzdGVyLmxvY2FsMTAwLgYDVQQDDCdzaWdu
ZXQgYXV0aG9yaXR5IGNsdXN0ZXIubG9jYWwgZmFhZmMxZmMwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAATA8Hb2DaZGokRoQw8oMubJ5h8hUUxh8i/YJX3TrzlRA9yO
turqIfREkyq7uaIwblZQwNeCbPnxZywLabOp6NC8o2gwZjASBgNVHRMBAf8ECDAG
AQH/AgEAMA4GA1UdDwEB/wQEAwIBBjAdBgNVHQ4EFgQUxPsbo1WJFXg3AJomOu/c
jqSlcbcwIQYDVR0RBBowGIYWc3BpZmZlOi8vY2x1c3Rlci5sb2NhbDAKBggqhkjO
PQQDAgNIADBFAiAI0pwV1Lka5V1fIlGynNVcD+LUaN3CNmurVnt3eIYRTgIhAMlv
nQZFydp3su24amOlBnz+qxAn1XBJS46zSOQSGv8H
-----END CERTIFICATE-----
)";
inline constexpr const char* kNodeAKey = R"(-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgQzJjAFOkj1fSX4+I
w/PNPe/AY9zmclidpY8QJv7u5LehRANCAAT6ZIDPw19MN1LijuKDUM8cy6YeB6Vm
y5x990Fh4U+UbW8WLOyJgJUsc3m/7qG4oSaH/4ACLVTLWS2EN+m52iNX
-----END PRIVATE KEY-----
)";
inline constexpr const char* kNodeACert = R"(-----BEGIN CERTIFICATE-----
MIICAzCCAaigAwIBAgIQZCCDis6MfUuUPgflxYchtDAKBggqhkjOPQQDAjBKMRYw
FAYDVQQKDA1jbHVzdGVyLmxvY2FsMTAwLgYDVQQDDCdzaWduZXQgYXV0aG9yaXR5
IGNsdXN0ZXIubG9jYWwgZmFhZmMxZmMwHhcNMjUxMjMxMTIwMDAwWhcNMjYwMTAx
MTIwMDAwWjApMRYwFAYDVQQKDA1jbHVzdGVyLmxvY2FsMQ8wDQYDVQQDDAZub2Rl
LWEwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAT6ZIDPw19MN1LijuKDUM8cy6Ye
B6Vmy5x990Fh4U+UbW8WLOyJgJUsc3m/7qG4oSaH/4ACLVTLWS2EN+m52iNXo4GQ
MIGNMAwGA1UdEwEB/wQCMAAwDgYDVR0PAQH/BAQDAgOIMB0GA1UdJQQWMBQGCCsG
AQUFBwMBBggrBgEFBQcDAjAfBgNVHSMEGDAWgBTE+xujVYkVeDcAmiY679yOpKVx
tzAtBgNVHREEJjAkhiJzcGlmZmU6Ly9jbHVzdGVyLmxvY2FsL25vZGUvbm9kZS1h
MAoGCCqGSM49BAMCA0kAMEYCIQC5fvENoL+OKec9Cn4GirpiIogCDV47ST1P7/GV
fY9F8wIhAP9Nlp5UI/53oHy/ft+nItaV8tcYnxgIzqIOixkrzpkR
-----END CERTIFICATE-----
)";
inline constexpr const char* kNodeBKey = R"(-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg4IKHsmbfuGxXvuN8
sZ1Nz0Z674zkNDRygFmq7mbhHLehRANCAARRdo1wPjPI9/aH+q3DukwDbVxgv3Z7
Pt/N1BWCePJ9faiT4+QjXER+ZSOSuUB7Mlqst+vgMpVNBZlKCktzG08x
-----END PRIVATE KEY-----
)";
inline constexpr const char* kNodeBCert = R"(-----BEGIN CERTIFICATE-----
MIICAjCCAaigAwIBAgIQRm7eiHpm5xsVaxCVy7Ey2DAKBggqhkjOPQQDAjBKMRYw
FAYDVQQKDA1jbHVzdGVyLmxvY2FsMTAwLgYDVQQDDCdzaWduZXQgYXV0aG9yaXR5
IGNsdXN0ZXIubG9jYWwgZmFhZmMxZmMwHhcNMjUxMjMxMTIwMDAwWhcNMjYwMTAx
MTIwMDAwWjApMRYwFAYDVQQKDA1jbHVzdGVyLmxvY2FsMQ8wDQYDVQQDDAZub2Rl
LWIwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARRdo1wPjPI9/aH+q3DukwDbVxg
v3Z7Pt/N1BWCePJ9faiT4+QjXER+ZSOSuUB7Mlqst+vgMpVNBZlKCktzG08xo4GQ
MIGNMAwGA1UdEwEB/wQCMAAwDgYDVR0PAQH/BAQDAgOIMB0GA1UdJQQWMBQGCCsG
AQUFBwMBBggrBgEFBQcDAjAfBgNVHSMEGDAWgBTE+xujVYkVeDcAmiY679yOpKVx
tzAtBgNVHREEJjAkhiJzcGlmZmU6Ly9jbHVzdGVyLmxvY2FsL25vZGUvbm9kZS1i
MAoGCCqGSM49BAMCA0gAMEUCIQCn2ICUz/OLlh7okXMKPMwMgqdkZG3m5K3SOrhx
cRQk7wIgIr0YmYz1Osjh/fxyf2CxzyOz9km8qgQpjJqwU+QGyUU=
-----END CERTIFICATE-----
)";

}  // namespace signet::identity::testkeys
