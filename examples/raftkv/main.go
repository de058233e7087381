// Command raftkv is a replicated key-value store built on go.etcd.io/raft/v3
// and the rafthttp transport: every member keeps the whole map, changes go
// through raft, and members talk over HTTP with etcd's peer protocol.
//
// It runs in two ways:
//
//	raftkv demo [--keys N]
//
// starts three members in one process, each with its own HTTP server on
// 127.0.0.1 and its own data directory, and walks through a scripted tour:
// election, bulk writes, a member added by ConfChange that catches up
// through a snapshot, a follower restarted from disk, a consistency check
// and a summary of the transport's figures. It exits 0 only if every check
// passed.
//
//	raftkv --id 1 --cluster http://127.0.0.1:12379,http://127.0.0.1:22379,http://127.0.0.1:32379 --port 12380
//
// runs one member of a cluster, one process per member, as etcd's
// raftexample does, with an HTTP API: PUT, GET and DELETE on /KEY, POST
// /members/ID (body: the new member's peer URL) and DELETE /members/ID.
// Start a new member with --join after adding it.
//
// Each member persists raft's HardState, log entries and snapshot metadata
// in a bolt database (DATA-DIR/raftkv.db), fsynced before the messages of a
// Ready are sent, and snapshot payloads (the map as JSON) in DATA-DIR/snap.
// It snapshots every 1,000 applied entries (--snapshot-count) and keeps 100
// entries behind the snapshot; a follower further behind gets the snapshot
// over /raft/snapshot. Its cluster ID is 0x6b76 unless --cluster-id says
// otherwise.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/raftkit/rafthttp"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// usageError is a command-line mistake: exit status 2, like the flag
// package.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// run runs the command and returns its exit status. Errors are printed as
// one line on stderr.
func run(args []string, stdout, stderr io.Writer) int {
	var err error
	if len(args) > 0 && args[0] == "demo" {
		err = runDemoCommand(args[1:], stdout)
	} else {
		err = runMember(args, stdout, stderr)
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "raftkv: %s (see raftkv -h)\n", oneLine(err))
		return 2
	default:
		fmt.Fprintf(stderr, "raftkv: %s\n", oneLine(err))
		return 1
	}
}

// oneLine joins the lines of an error's message.
func oneLine(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
}

const memberUsage = `usage:
  raftkv demo [--keys N]
      run a three-member cluster in this process and tour it
  raftkv --id ID --cluster URL1,URL2,... --port PORT [--data-dir DIR] [--join]
         [--cluster-id ID] [--snapshot-count N]
      run member ID of a cluster; member i has the i-th peer URL of --cluster

flags:
`

// runDemoCommand parses the demo's flags and runs it.
func runDemoCommand(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("raftkv demo", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	keys := fs.Int("keys", 20000, "number of keys to write")
	verbose := fs.Bool("v", false, "log the transport's and raft's messages to stderr")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stdout, "usage: raftkv demo [--keys N]\n\n  --keys N   number of keys to write (default 20000)\n")
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	if *keys < 100 {
		return usageError{fmt.Errorf("--keys %d: want at least 100", *keys)}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg := demoConfig{Keys: *keys, Out: stdout, Terminal: isTerminal(os.Stdout)}
	if *verbose {
		cfg.Logger = newLogger(os.Stderr, zap.DebugLevel)
	}
	return runDemo(ctx, cfg)
}

// newLogger returns a console logger to w, one line per entry.
func newLogger(w io.Writer, level zapcore.Level) *zap.Logger {
	enc := zap.NewDevelopmentEncoderConfig()
	enc.StacktraceKey = ""
	return zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.Lock(zapcore.AddSync(w)), level))
}

// isTerminal reports whether f is a terminal (a character device).
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// memberFlags are the command line of multi-process mode.
type memberFlags struct {
	id      uint64
	peers   map[uint64]string // by member ID, from --cluster
	peerURL *url.URL          // this member's
	port    int
	dataDir string
	join    bool
	tick    time.Duration
	verbose bool
	// clusterID and snapshotEvery go to memberConfig; parsing fills in
	// their defaults.
	clusterID     uint64
	snapshotEvery uint64
}

// hexID is a flag.Value for an ID given in decimal or in 0x hex, and shown
// in hex, as etcd shows cluster IDs.
type hexID uint64

// String implements flag.Value: the ID in hex.
func (h *hexID) String() string { return fmt.Sprintf("%#x", uint64(*h)) }

// Set implements flag.Value: s in decimal or 0x hex.
func (h *hexID) Set(s string) error {
	v, err := strconv.ParseUint(s, 0, 64)
	if err != nil {
		return errors.New("want a number, decimal or 0x hex")
	}
	*h = hexID(v)
	return nil
}

// parseMemberFlags parses and checks the command line of multi-process
// mode.
func parseMemberFlags(args []string, stdout io.Writer) (memberFlags, error) {
	fs := flag.NewFlagSet("raftkv", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	id := fs.Uint64("id", 0, "this member's ID: its position in --cluster, from 1")
	cluster := fs.String("cluster", "", "comma-separated peer URLs of the members, member 1 first")
	port := fs.Int("port", 0, "port of the key-value HTTP API, on the host of this member's peer URL")
	dataDir := fs.String("data-dir", "", "data directory (default raftkv-ID)")
	join := fs.Bool("join", false, "join an existing cluster (after POST /members/ID on a member)")
	tick := fs.Duration("tick", 100*time.Millisecond, "raft tick; elections take 10 to 20 ticks")
	verbose := fs.Bool("v", false, "log the transport's and raft's informational messages")
	clusterID := hexID(defaultClusterID)
	fs.Var(&clusterID, "cluster-id", "the cluster's `ID` (decimal or 0x hex), the same on every member: members refuse peers of other clusters")
	snapshotEvery := fs.Uint64("snapshot-count", defaultSnapshotEvery,
		"applied entries between two snapshots; the log keeps 100 entries behind a snapshot, a follower further behind gets the snapshot")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fmt.Fprint(stdout, memberUsage)
			fs.PrintDefaults()
		}
		return memberFlags{}, usageError{err}
	}
	f := memberFlags{
		id: *id, port: *port, dataDir: *dataDir, join: *join, tick: *tick, verbose: *verbose,
		clusterID: uint64(clusterID), snapshotEvery: *snapshotEvery,
	}
	switch {
	case fs.NArg() > 0:
		return f, usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	case f.id == 0:
		return f, usageError{errors.New("--id is required (or run 'raftkv demo')")}
	case *cluster == "":
		return f, usageError{errors.New("--cluster is required")}
	case f.port <= 0 || f.port > 65535:
		return f, usageError{fmt.Errorf("--port %d: want a port between 1 and 65535", f.port)}
	case f.tick <= 0:
		return f, usageError{fmt.Errorf("--tick %v: want a positive duration", f.tick)}
	case f.clusterID == 0:
		return f, usageError{errors.New("--cluster-id 0: want a non-zero ID")}
	case f.snapshotEvery == 0:
		return f, usageError{errors.New("--snapshot-count 0: want at least 1")}
	}
	f.peers = map[uint64]string{}
	list := strings.Split(*cluster, ",")
	for i, s := range list {
		u, err := url.Parse(strings.TrimSpace(s))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Port() == "" || (u.Path != "" && u.Path != "/") {
			return f, usageError{fmt.Errorf("--cluster: member %d: %q is not a peer URL like http://127.0.0.1:12379", i+1, s)}
		}
		u.Path = ""
		f.peers[uint64(i+1)] = u.String()
		if uint64(i+1) == f.id {
			f.peerURL = u
		}
	}
	if f.peerURL == nil {
		return f, usageError{fmt.Errorf("--id %d is not in --cluster, which lists members 1 to %d", f.id, len(list))}
	}
	if f.dataDir == "" {
		f.dataDir = "raftkv-" + strconv.FormatUint(f.id, 10)
	}
	return f, nil
}

// runMember runs one member of a multi-process cluster until it is
// interrupted, removed, or fails.
func runMember(args []string, stdout, stderr io.Writer) error {
	f, err := parseMemberFlags(args, stdout)
	if err != nil {
		return err
	}
	level := zap.WarnLevel
	if f.verbose {
		level = zap.InfoLevel
	}
	lg := newLogger(stderr, level)
	defer lg.Sync()

	peerLis, err := net.Listen("tcp", f.peerURL.Host)
	if err != nil {
		return fmt.Errorf("peer URL %s: %w", f.peerURL, err)
	}
	apiAddr := net.JoinHostPort(f.peerURL.Hostname(), strconv.Itoa(f.port))
	apiLis, err := net.Listen("tcp", apiAddr)
	if err != nil {
		peerLis.Close()
		return fmt.Errorf("--port %d: %w", f.port, err)
	}
	defer apiLis.Close()

	m, err := startMember(memberConfig{
		ID: f.id, DataDir: f.dataDir, PeerListener: peerLis, PeerURL: f.peerURL.String(),
		Peers: f.peers, Join: f.join, Tick: f.tick, Logger: lg,
		ClusterID: f.clusterID, SnapshotEvery: f.snapshotEvery,
		Fatal: func(msg string) {
			fmt.Fprintf(stderr, "raftkv: raft: %s\n", msg)
			os.Exit(1)
		},
	})
	if err != nil {
		return err
	}
	defer m.Stop()

	// The peer server's recipe suits the API too, for its header and idle
	// timeouts. Unlike the raft routes, the API does not pace its request
	// bodies, so it gets a ReadTimeout as well: longer than a write waits
	// to be applied, since net/http cancels the request's context when it
	// expires.
	api := rafthttp.NewServer(newAPI(m))
	api.ReadTimeout = proposalTimeout + 5*time.Second
	served := make(chan error, 1)
	go func() { served <- api.Serve(apiLis) }()
	if m.fresh {
		fmt.Fprintf(stderr, "raftkv: member %d: new data dir %s\n", f.id, f.dataDir)
	} else {
		fmt.Fprintf(stderr, "raftkv: member %d: restarting from data dir %s: snapshot at index %d + %d log entries\n",
			f.id, f.dataDir, m.reloadedSnapshot, m.reloadedEntries)
	}
	fmt.Fprintf(stderr, "raftkv: member %d: peers on %s, key-value API on http://%s\n", f.id, f.peerURL, apiAddr)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	select {
	case s := <-sig:
		fmt.Fprintf(stderr, "raftkv: member %d: %v, shutting down\n", f.id, s)
	case <-m.Done():
	case err := <-served:
		return fmt.Errorf("key-value API: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	api.Shutdown(ctx)
	<-served
	m.Stop()
	switch err := m.Err(); {
	case errors.Is(err, errRemoved):
		fmt.Fprintf(stderr, "raftkv: member %d was removed from the cluster; shutting down\n", f.id)
		return nil
	default:
		return err
	}
}
