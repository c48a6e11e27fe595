// The pod sandbox process for the e2e node (see e2e/tools.sh build_pause).
module fanout-e2e-tools/pause

go 1.24.0
