package faultnet_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"time"

	"github.com/raftkit/rafthttp/faultnet"
)

// echoServer listens on 127.0.0.1 and sends back every line it reads. It
// returns its address and a function that stops it.
func echoServer() (addr string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String(), func() { ln.Close(); <-done }, nil
}

// A proxy with latency: every chunk of bytes is delayed each way, so a
// round trip takes at least twice the latency less the jitter.
func ExampleProxy_SetLatency() {
	target, stop, err := echoServer()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()
	n := faultnet.New(1) // the seed of the jitter
	defer n.Close()
	p, err := n.Proxy(target)
	if err != nil {
		fmt.Println(err)
		return
	}
	p.SetLatency(50*time.Millisecond, 10*time.Millisecond)

	c, err := net.Dial("tcp", p.Addr()) // the proxy instead of the target
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	start := time.Now()
	fmt.Fprintln(c, "ping")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("echoed %q; took at least 80ms: %v\n", line, time.Since(start) >= 80*time.Millisecond)
	// Output: echoed "ping\n"; took at least 80ms: true
}

// A one-way partition holds the bytes of one direction, and the
// connection stays open; after Heal they are delivered.
func ExampleProxy_Partition() {
	target, stop, err := echoServer()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()
	n := faultnet.New(1)
	defer n.Close()
	p, err := n.Proxy(target)
	if err != nil {
		fmt.Println(err)
		return
	}
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	r := bufio.NewReader(c)

	p.Partition(faultnet.ClientToServer)
	fmt.Fprintln(c, "held")
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := r.ReadString('\n'); errors.Is(err, os.ErrDeadlineExceeded) {
		fmt.Println("partitioned: no echo")
	}

	p.Heal()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := r.ReadString('\n')
	fmt.Printf("healed: %q %v\n", line, err)
	fmt.Println(p.Stats().Swallowed, "bytes lost")
	// Output:
	// partitioned: no echo
	// healed: "held\n" <nil>
	// 0 bytes lost
}

// A Mesh of three members, each an HTTP server here: member 1 reaches
// member 2 through the proxy of the pair (1, 2), until member 2 is
// isolated.
func ExampleMesh() {
	targets := map[uint64]string{}
	for id := uint64(1); id <= 3; id++ {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintf(w, "member %d", id)
		}))
		defer srv.Close()
		targets[id] = srv.Listener.Addr().String()
	}
	n := faultnet.New(1)
	defer n.Close() // deferred last, so run first: the servers close after
	mesh, err := n.Mesh(targets)
	if err != nil {
		fmt.Println(err)
		return
	}

	// As member 1, with a timeout, since a partition holds requests.
	client := &http.Client{Timeout: 300 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}
	get := func(from, to uint64) string {
		resp, err := client.Get(mesh.URL(from, to))
		if err != nil {
			return "no answer"
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	fmt.Println("1 -> 2:", get(1, 2))
	if err := mesh.Isolate(2); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("2 isolated, 1 -> 2:", get(1, 2))
	fmt.Println("2 isolated, 1 -> 3:", get(1, 3))
	mesh.Heal()
	fmt.Println("healed, 1 -> 2:", get(1, 2))
	// Output:
	// 1 -> 2: member 2
	// 2 isolated, 1 -> 2: no answer
	// 2 isolated, 1 -> 3: member 3
	// healed, 1 -> 2: member 2
}

// A member behind a slow link: every proxy of its pairs gets a latency and
// a bandwidth cap, the other pairs stay fast.
func ExampleMesh_Links() {
	n := faultnet.New(7)
	defer n.Close()
	mesh, err := n.Mesh(map[uint64]string{1: "127.0.0.1:2380", 2: "127.0.0.1:2381", 3: "127.0.0.1:2382"})
	if err != nil {
		fmt.Println(err)
		return
	}
	links, err := mesh.Links(3)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, p := range links {
		p.SetLatency(20*time.Millisecond, 5*time.Millisecond)
		p.SetBandwidth(64 << 10)
	}
	fmt.Println(len(links), "proxies slowed: (3, 1), (1, 3), (3, 2), (2, 3)")
	fmt.Println("1 -> 3 slowed:", slices.Contains(links, mesh.Proxy(1, 3)), "to", mesh.Proxy(1, 3).Target())
	fmt.Println("1 -> 2 slowed:", slices.Contains(links, mesh.Proxy(1, 2)))
	// Output:
	// 4 proxies slowed: (3, 1), (1, 3), (3, 2), (2, 3)
	// 1 -> 3 slowed: true to 127.0.0.1:2382
	// 1 -> 2 slowed: false
}
