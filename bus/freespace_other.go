//go:build !linux

package bus

import "errors"

// freeSpace is only measured on Linux; elsewhere the store watchdog
// restarts JetStream without waiting for space.
func freeSpace(string) (free, size int64, err error) {
	return 0, 0, errors.New("free space is only measured on linux")
}
