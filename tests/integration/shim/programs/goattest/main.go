// goattest: a Go enclave program that never calls libc (CGO_ENABLED=0, static). It opens
// /dev/nsm and makes the NSM ioctl with the standard library's raw syscall package, as
// hf/nsm does, and serves the attestation reply over AF_VSOCK with golang.org/x/sys/unix,
// as mdlayher/vsock does. Built by tests/integration/shim/toolchains.py in GOPATH mode.
//
//	goattest PORT USER_DATA NONCE
package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

const nsmIoctl = 0xC0200A00

type iovec struct {
	base uintptr
	len  uint64
}

type nsmMessage struct {
	request  iovec
	response iovec
}

// attestationRequest is {"Attestation": {"user_data": u, "nonce": n, "public_key": null}} in CBOR.
func attestationRequest(user, nonce []byte) []byte {
	out := []byte{0xA1, 0x6B}
	out = append(out, "Attestation"...)
	out = append(out, 0xA3, 0x69)
	out = append(out, "user_data"...)
	out = append(out, 0x58, byte(len(user)))
	out = append(out, user...)
	out = append(out, 0x65)
	out = append(out, "nonce"...)
	out = append(out, 0x58, byte(len(nonce)))
	out = append(out, nonce...)
	out = append(out, 0x6A)
	out = append(out, "public_key"...)
	return append(out, 0xF6)
}

func fail(what string, err error) {
	fmt.Printf("%s-FAILED %v\n", what, err)
	os.Exit(1)
}

func main() {
	port, _ := strconv.Atoi(os.Args[1])
	fd, err := syscall.Open("/dev/nsm", syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		fail("OPEN", err)
	}
	request := attestationRequest([]byte(os.Args[2]), []byte(os.Args[3]))
	reply := make([]byte, 0x4000)
	msg := nsmMessage{
		request:  iovec{uintptr(unsafe.Pointer(&request[0])), uint64(len(request))},
		response: iovec{uintptr(unsafe.Pointer(&reply[0])), uint64(len(reply))},
	}
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), nsmIoctl, uintptr(unsafe.Pointer(&msg))); errno != 0 {
		fail("IOCTL", errno)
	}
	reply = reply[:msg.response.len]

	listener, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fail("SOCKET", err)
	}
	if err := unix.Bind(listener, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: uint32(port)}); err != nil {
		fail("BIND", err)
	}
	if err := unix.Listen(listener, 4); err != nil {
		fail("LISTEN", err)
	}
	name, err := unix.Getsockname(listener)
	if err != nil {
		fail("GETSOCKNAME", err)
	}
	bound := name.(*unix.SockaddrVM)
	fmt.Printf("LISTENING %d %d\n", bound.CID, bound.Port)
	for {
		conn, peer, err := unix.Accept(listener)
		if err != nil {
			fail("ACCEPT", err)
		}
		vm, ok := peer.(*unix.SockaddrVM)
		if !ok {
			fail("PEER", fmt.Errorf("not a sockaddr_vm: %T", peer))
		}
		header := make([]byte, 4)
		binary.BigEndian.PutUint32(header, uint32(len(reply)))
		unix.Write(conn, header)
		unix.Write(conn, reply)
		fmt.Printf("SERVED %d:%d\n", vm.CID, vm.Port)
		unix.Close(conn)
	}
}
