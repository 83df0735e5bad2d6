//go:build !linux

package deviceid

import (
	"errors"
	"net"
)

// steer needs Linux's SO_ATTACH_REUSEPORT_CBPF.
func steer(*net.UDPConn, int, int) error {
	return errors.New("the fast path needs Linux (SO_ATTACH_REUSEPORT_CBPF)")
}

func listenReusePort(string) (*net.UDPConn, error) {
	return nil, errors.New("the fast path needs Linux")
}
