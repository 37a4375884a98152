// Package netlab builds a small network of Linux hosts for multi-host
// tests: each host is a network namespace, each network a bridge, and hosts
// join networks through veth pairs. The bridges live in a namespace of
// their own, so the test machine's interfaces, routes and firewall are
// never touched. Hosts get only their connected routes and do not forward,
// so a host reaches exactly the hosts that share one of its networks.
//
// A process runs on a host through `ip netns exec`; with Isolated it also
// gets a private mount namespace in which /tmp and the lab's root directory
// are empty tmpfs mounts except for the host's own directory, so it cannot
// see other hosts' files or unix sockets — as on another machine.
//
// Creating namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and the
// `ip` and `unshare` programs; New skips the test without them, or fails it
// when CI=true. Everything a lab creates is removed by the test's cleanup,
// also on failure, and namespaces left by a killed test process are removed
// by the next New.
//
// It must never be imported by non-test code.
package netlab
