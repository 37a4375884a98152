// Package simctl is the control service of the simulated vCenter
// (sendense.testbed), run by `sendense serve --simulate-vcenter`. Scripts and
// the demo use it to list the VMs (with each disk's live image path), to make
// guest writes, reset CBT, resize a disk, and find the image the testbed
// froze at a snapshot.
//
// It must never be started against a real vCenter: it only wraps a
// *testbed.Testbed.
package simctl
