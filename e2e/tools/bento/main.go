// A Bento (github.com/warpstreamlabs/bento) for dispatcher/benches/peer.rs, the
// peer benchmark: Bento's own command line with only the components that
// benchmark's configurations use, so that it builds in a fraction of the time the
// full distribution (every cloud SDK, databases, WASM, Python) takes. The
// components come from three of Bento's public bundles:
//   - nats: the nats_jetstream input;
//   - io:   the http_client output;
//   - pure: the broker output (pattern fan_out) and the rest of the core.
package main

import (
	"context"

	"github.com/warpstreamlabs/bento/public/service"

	_ "github.com/warpstreamlabs/bento/public/components/io"
	_ "github.com/warpstreamlabs/bento/public/components/nats"
	_ "github.com/warpstreamlabs/bento/public/components/pure"
)

// Version is set at build time (e2e/tools.sh: -ldflags -X main.Version=...) to
// the pinned Bento version, so that `fanout-bento --version` names it.
var Version = "unknown"

func main() {
	service.RunCLI(
		context.Background(),
		service.CLIOptSetBinaryName("fanout-bento"),
		service.CLIOptSetProductName("Bento (nats, io and pure components)"),
		service.CLIOptSetVersion(Version, "module-proxy"),
	)
}
