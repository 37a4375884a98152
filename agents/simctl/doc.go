// Package simctl is the control service of the simulated vCenter
// (sendense.testbed), run by `sendense serve --simulate-vcenter` (as admin)
// and by `sendense vcenter-sim` (as the testbed identity, which may answer
// on sendense.testbed.> and nothing else). Scripts, tests and the demo use
// it to list the VMs (with each disk's live image path), to make guest
// writes, reset CBT, resize a disk, and find the image the testbed froze at
// a snapshot (with its SHA-256 when asked, for callers on other hosts).
//
// It must never be started against a real vCenter: it only wraps a
// *testbed.Testbed.
package simctl
