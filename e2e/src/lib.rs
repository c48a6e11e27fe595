//! End-to-end tests of Fanout against the local control plane started by
//! `e2e/cluster.sh`; the tests live in `tests/`, the manifests they use in `manifests/`.
