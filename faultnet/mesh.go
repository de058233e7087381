package faultnet

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
)

// ErrUnknownMember is returned by the methods of a Mesh given a member ID
// that was never added to it.
var ErrUnknownMember = errors.New("faultnet: unknown member")

// Mesh is the network of a cluster: a Proxy per ordered pair of members.
// Member a reaches member b at URL(a, b), through Proxy(a, b), which
// forwards to b's address: every connection a opens to b crosses that
// proxy, and nothing else does.
//
// Its partitions are named by members and by what they send. The bytes
// member a sends to member b travel client to server on Proxy(a, b) (the
// requests a makes to b) and server to client on Proxy(b, a) (a's answers
// to b's requests, and the streams b reads from a). PartitionOneWay holds
// both, so that what a sends does not reach b, whichever of them opened
// the connection, while what b sends still reaches a. Held bytes are
// delivered after a heal, as in [Proxy.Partition].
//
// A Mesh is made by Network.Mesh; the zero value is not usable. Its methods
// are safe for concurrent use. Its proxies belong to the Network and close
// with it. Latency, bandwidth and black holes are set on the proxies
// themselves (see Links); partitions set on a proxy directly are replaced
// the next time the Mesh partitions or heals that pair.
type Mesh struct {
	net *Network

	mu      sync.Mutex
	targets map[uint64]string
	proxies map[pair]*Proxy
	held    map[pair]bool // the bytes pair.from sends to pair.to are held
}

// pair is an ordered pair of members.
type pair struct{ from, to uint64 }

// Mesh returns a Mesh of the members of targets, which maps each member ID
// to the host:port address it serves on. It creates the proxies as
// Mesh.Add would, adding the members in ID order, so that the same targets
// give the same proxies the same seeds. On error no proxy is left running.
func (n *Network) Mesh(targets map[uint64]string) (*Mesh, error) {
	m := &Mesh{net: n, targets: map[uint64]string{}, proxies: map[pair]*Proxy{}, held: map[pair]bool{}}
	for _, id := range slices.Sorted(maps.Keys(targets)) {
		if err := m.Add(id, targets[id]); err != nil {
			for _, p := range m.proxies {
				p.Close()
			}
			return nil, err
		}
	}
	return m, nil
}

// Add adds member id, which serves on target (host:port), with a proxy each
// way between it and every member already there, created in the order of
// their IDs: (id, j) then (j, id). The new pairs have no fault. Add fails
// if id is zero (no raft member has that ID) or already a member, if target
// is not a host:port address, or with ErrClosed after Network.Close; on
// error, the mesh is left as it was.
func (m *Mesh) Add(id uint64, target string) error {
	if id == 0 {
		return errors.New("faultnet: member ID must be non-zero")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.targets[id]; ok {
		return fmt.Errorf("faultnet: member %d is already in the mesh", id)
	}
	added := map[pair]*Proxy{}
	fail := func(err error) error {
		for _, p := range added {
			p.Close()
		}
		return err
	}
	if len(m.targets) == 0 {
		// No pair to make yet: check the target as Network.Proxy would.
		if err := m.net.checkTarget(target); err != nil {
			return err
		}
	}
	for _, j := range slices.Sorted(maps.Keys(m.targets)) {
		for _, k := range []pair{{id, j}, {j, id}} {
			dest := m.targets[k.to]
			if k.to == id {
				dest = target
			}
			p, err := m.net.Proxy(dest)
			if err != nil {
				return fail(err)
			}
			added[k] = p
		}
	}
	m.targets[id] = target
	maps.Copy(m.proxies, added)
	return nil
}

// Members returns the IDs of the members, in increasing order.
func (m *Mesh) Members() []uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Sorted(maps.Keys(m.targets))
}

// Proxy returns the proxy from dials to reach to, or nil if from and to are
// not two members of the mesh.
func (m *Mesh) Proxy(from, to uint64) *Proxy {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.proxies[pair{from, to}]
}

// URL returns the URL at which from reaches to, "http://" and the address
// of Proxy(from, to), or "" if from and to are not two members of the mesh.
func (m *Mesh) URL(from, to uint64) string {
	if p := m.Proxy(from, to); p != nil {
		return p.URL()
	}
	return ""
}

// Links returns the proxies of every pair id belongs to, both ways: for
// each other member j in ID order, Proxy(id, j) then Proxy(j, id). Setting
// a latency or a bandwidth on all of them makes id a member behind a slow
// link. It returns ErrUnknownMember if id is not a member.
func (m *Mesh) Links(id uint64) ([]*Proxy, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.targets[id]; !ok {
		return nil, fmt.Errorf("%w: %d", ErrUnknownMember, id)
	}
	var out []*Proxy
	for _, j := range slices.Sorted(maps.Keys(m.targets)) {
		if j != id {
			out = append(out, m.proxies[pair{id, j}], m.proxies[pair{j, id}])
		}
	}
	return out, nil
}

// PartitionOneWay holds the bytes each member of from sends to each member
// of to (a member in both is not cut from itself), while the bytes the
// other way flow. Partitions add up: what was held stays held until Heal.
// It returns ErrUnknownMember, and changes nothing, if a member is not in
// the mesh.
func (m *Mesh) PartitionOneWay(from, to []uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.checkLocked(from, to); err != nil {
		return err
	}
	for _, a := range from {
		for _, b := range to {
			if a != b {
				m.held[pair{a, b}] = true
				m.applyLocked(a, b)
			}
		}
	}
	return nil
}

// Partition holds the bytes between every member of a and every member of
// b, both ways: the two groups no longer hear each other, while each group
// works on its own. It is PartitionOneWay(a, b) and PartitionOneWay(b, a).
func (m *Mesh) Partition(a, b []uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.checkLocked(a, b); err != nil {
		return err
	}
	for _, x := range a {
		for _, y := range b {
			if x != y {
				m.held[pair{x, y}], m.held[pair{y, x}] = true, true
				m.applyLocked(x, y)
			}
		}
	}
	return nil
}

// Isolate partitions id from every other member, both ways.
func (m *Mesh) Isolate(id uint64) error {
	m.mu.Lock()
	others := slices.DeleteFunc(slices.Sorted(maps.Keys(m.targets)), func(j uint64) bool { return j == id })
	m.mu.Unlock()
	return m.Partition([]uint64{id}, others)
}

// Heal lifts every partition and heals every proxy of the mesh
// (Proxy.Heal): latencies, bandwidth caps and black holes set on them are
// cleared too. Held bytes are delivered.
func (m *Mesh) Heal() {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.held)
	for _, p := range m.proxies {
		p.Heal()
	}
}

// checkLocked returns ErrUnknownMember for the first ID of groups that is
// not a member.
func (m *Mesh) checkLocked(groups ...[]uint64) error {
	for _, g := range groups {
		for _, id := range g {
			if _, ok := m.targets[id]; !ok {
				return fmt.Errorf("%w: %d", ErrUnknownMember, id)
			}
		}
	}
	return nil
}

// applyLocked sets the partitions of both proxies of the pair {a, b} from
// what is held: on Proxy(a, b), a's bytes go client to server and b's
// server to client.
func (m *Mesh) applyLocked(a, b uint64) {
	for _, k := range []pair{{a, b}, {b, a}} {
		var dir Direction
		if m.held[k] {
			dir |= ClientToServer
		}
		if m.held[pair{k.to, k.from}] {
			dir |= ServerToClient
		}
		m.proxies[k].Partition(dir)
	}
}
