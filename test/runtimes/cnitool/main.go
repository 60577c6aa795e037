// cnitool: a small libcni-driven CNI runtime for signet's integration tests.
//
// It drives a conflist exactly the way every Go container runtime does
// (containerd, CRI-O, podman's CNI backend): libcni.LoadConfList,
// NewCNIConfigWithCacheDir and Add/Check/DelNetworkList, so CHECK and DEL get
// the prevResult that libcni cached on ADD.
//
// Usage:
//
//	cnitool [-cache-dir DIR] add|check|del NETCONFDIR NETNAME CONTAINERID NETNS IFNAME
//	cnitool version                      # spec versions this libcni implements
//	cnitool cached NETCONFDIR NETNAME CONTAINERID NETNS IFNAME   # print libcni's cached result
//
// Environment:
//
//	CNI_PATH       colon-separated plugin directories (required for add/check/del)
//	CNI_CACHE_DIR  libcni cache dir when -cache-dir is not given (tests keep it private)
//	CNI_ARGS       "K1=V1;K2=V2" passed to the plugins as RuntimeConf.Args
//	CAP_ARGS       JSON object passed as RuntimeConf.CapabilityArgs
//
// On success the result (add) or {} (check, del) is printed as JSON on stdout
// and the exit status is 0. On failure a JSON object
// {"error": {"code": N, "msg": "...", "details": "..."}, "message": "..."}
// is printed on stdout (code is the failing plugin's CNI error code, 0 when
// the error did not come from a plugin) and the exit status is 1.
//
// Build offline with Debian's golang-go and golang-github-appc-cni-dev:
//
//	GO111MODULE=off GOPATH=$T/gopath:/usr/share/gocode go build -o $T/cnitool .
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

func usage() {
	fmt.Fprintf(os.Stderr, "usage: %s [-cache-dir DIR] [-timeout D] add|check|del|cached NETCONFDIR NETNAME CONTAINERID NETNS IFNAME\n       %s version\n", os.Args[0], os.Args[0])
	os.Exit(2)
}

type errorOut struct {
	Error   types.Error `json:"error"`
	Message string      `json:"message"`
}

func fail(err error) {
	out := errorOut{Message: err.Error()}
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		out.Error = *cniErr
	} else {
		out.Error = types.Error{Code: 0, Msg: err.Error()}
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
	fmt.Fprintln(os.Stderr, "cnitool:", err)
	os.Exit(1)
}

func printJSON(v interface{}) {
	b, err := json.Marshal(v)
	if err != nil {
		fail(err)
	}
	fmt.Println(string(b))
}

func parseArgs(s string) ([][2]string, error) {
	var out [][2]string
	if s == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ";") {
		if kv == "" {
			continue
		}
		parts := strings.SplitN(kv, "=", 2)
		if len(parts) != 2 {
			return nil, fmt.Errorf("invalid CNI_ARGS pair %q", kv)
		}
		out = append(out, [2]string{parts[0], parts[1]})
	}
	return out, nil
}

func main() {
	cacheDir := flag.String("cache-dir", os.Getenv("CNI_CACHE_DIR"), "libcni cache directory")
	timeout := flag.Duration("timeout", 60*time.Second, "overall timeout")
	flag.Usage = usage
	flag.Parse()
	args := flag.Args()
	if len(args) < 1 {
		usage()
	}

	if args[0] == "version" {
		printJSON(map[string]interface{}{
			"current":           version.Current(),
			"supportedVersions": version.All.SupportedVersions(),
		})
		return
	}
	if len(args) != 6 {
		usage()
	}
	cmd, confDir, netName, containerID, netns, ifName := args[0], args[1], args[2], args[3], args[4], args[5]
	if *cacheDir == "" {
		fail(errors.New("no cache dir: pass -cache-dir or set CNI_CACHE_DIR (tests must keep libcni's cache private)"))
	}

	netconf, err := libcni.LoadConfList(confDir, netName)
	if err != nil {
		fail(err)
	}

	rtArgs, err := parseArgs(os.Getenv("CNI_ARGS"))
	if err != nil {
		fail(err)
	}
	capArgs := map[string]interface{}{}
	if s := os.Getenv("CAP_ARGS"); s != "" {
		if err := json.Unmarshal([]byte(s), &capArgs); err != nil {
			fail(fmt.Errorf("CAP_ARGS: %w", err))
		}
	}

	netnsAbs := netns
	if netns != "" {
		if netnsAbs, err = filepath.Abs(netns); err != nil {
			fail(err)
		}
	}

	rt := &libcni.RuntimeConf{
		ContainerID:    containerID,
		NetNS:          netnsAbs,
		IfName:         ifName,
		Args:           rtArgs,
		CapabilityArgs: capArgs,
	}

	cniPath := filepath.SplitList(os.Getenv("CNI_PATH"))
	if len(cniPath) == 0 {
		fail(errors.New("CNI_PATH is not set"))
	}
	cninet := libcni.NewCNIConfigWithCacheDir(cniPath, *cacheDir, nil)

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	switch cmd {
	case "add":
		result, err := cninet.AddNetworkList(ctx, netconf, rt)
		if err != nil {
			fail(err)
		}
		printJSON(result)
	case "check":
		if err := cninet.CheckNetworkList(ctx, netconf, rt); err != nil {
			fail(err)
		}
		printJSON(map[string]interface{}{})
	case "del":
		if err := cninet.DelNetworkList(ctx, netconf, rt); err != nil {
			fail(err)
		}
		printJSON(map[string]interface{}{})
	case "cached":
		result, err := cninet.GetNetworkListCachedResult(netconf, rt)
		if err != nil {
			fail(err)
		}
		if result == nil {
			fmt.Println("null")
			return
		}
		printJSON(result)
	default:
		usage()
	}
}
