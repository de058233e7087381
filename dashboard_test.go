package rafthttp

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.etcd.io/raft/v3/raftpb"
)

// The Grafana dashboards of dashboards/ query the transport's metrics by
// name. These tests keep them honest: every metric a dashboard queries must
// be one the transport exports, with the labels the query groups and
// filters by, so that renaming a metric or a label cannot silently leave a
// panel empty.

// dashboardFiles are the dashboards checked, relative to the package.
var dashboardFiles = []string{"dashboards/rafthttp.json"}

// promqlRefs is what a PromQL expression refers to: metric names and label
// names (from matchers and grouping clauses), each once, in order.
type promqlRefs struct {
	metrics, labels []string
}

// promqlFunctions are PromQL's functions and aggregation operators: an
// identifier that names one is not a metric.
var promqlFunctions = func() map[string]bool {
	m := map[string]bool{}
	for _, f := range strings.Fields(`
		abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time
		ceil changes clamp clamp_max clamp_min cos cosh count_over_time
		day_of_month day_of_week day_of_year days_in_month deg delta deriv
		double_exponential_smoothing exp floor histogram_avg histogram_count
		histogram_fraction histogram_quantile histogram_stddev histogram_stdvar
		histogram_sum holt_winters hour idelta increase info irate label_join
		label_replace last_over_time ln log10 log2 mad_over_time max_over_time
		min_over_time minute month pi predict_linear present_over_time
		quantile_over_time rad rate resets round scalar sgn sin sinh sort
		sort_by_label sort_by_label_desc sort_desc sqrt stddev_over_time
		stdvar_over_time sum_over_time tan tanh time timestamp vector year
		avg bottomk count count_values group limit_ratio limitk max min quantile
		stddev stdvar sum topk`) {
		m[f] = true
	}
	return m
}()

// promqlGrouping are the keywords followed by a list of label names.
var promqlGrouping = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// promqlKeywords are the other words of PromQL that are not metric names.
var promqlKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "atan2": true,
	"inf": true, "nan": true, "Inf": true, "NaN": true,
}

// isIdentStart and isIdentChar say what a PromQL identifier is made of
// (metric names may hold colons).
func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}

func isIdentChar(c byte) bool { return isIdentStart(c) || '0' <= c && c <= '9' }

// promqlReferences finds the metric and label names of a PromQL expression,
// as Grafana sends it: Grafana's variables ($job, ${x}, $__rate_interval)
// may appear in strings, ranges and for numbers. It is a tokenizer, not a
// parser: it skips strings, ranges and numbers; reads the identifiers in
// braces and after by, without, on, ignoring, group_left and group_right as
// label names; takes an identifier followed by "(" as a function, which
// must be one of PromQL's; and takes any other identifier that is not a
// keyword as a metric name.
func promqlReferences(expr string) (promqlRefs, error) {
	var refs promqlRefs
	add := func(list *[]string, name string) {
		if !slices.Contains(*list, name) {
			*list = append(*list, name)
		}
	}
	// skipString returns the index after the string literal starting at i.
	skipString := func(i int) (int, error) {
		q := expr[i]
		for j := i + 1; j < len(expr); j++ {
			switch {
			case expr[j] == '\\' && q != '`':
				j++
			case expr[j] == q:
				return j + 1, nil
			}
		}
		return 0, fmt.Errorf("unterminated string at %d", i)
	}
	// labelList reads label names up to the closing delimiter, skipping
	// strings, and returns the index after it.
	labelList := func(i int, closing byte) (int, error) {
		for i < len(expr) {
			c := expr[i]
			switch {
			case c == closing:
				return i + 1, nil
			case c == '"' || c == '\'' || c == '`':
				j, err := skipString(i)
				if err != nil {
					return 0, err
				}
				i = j
			case isIdentStart(c):
				j := i
				for j < len(expr) && isIdentChar(expr[j]) {
					j++
				}
				add(&refs.labels, expr[i:j])
				i = j
			default:
				i++
			}
		}
		return 0, fmt.Errorf("no closing %q", closing)
	}
	nextNonSpace := func(i int) int {
		for i < len(expr) && strings.ContainsRune(" \t\r\n", rune(expr[i])) {
			i++
		}
		return i
	}
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			j, err := skipString(i)
			if err != nil {
				return promqlRefs{}, err
			}
			i = j
		case c == '{':
			j, err := labelList(i+1, '}')
			if err != nil {
				return promqlRefs{}, err
			}
			i = j
		case c == '[':
			j := strings.IndexByte(expr[i:], ']')
			if j < 0 {
				return promqlRefs{}, fmt.Errorf("no closing ']' for the range at %d", i)
			}
			i += j + 1
		case c == '#':
			j := strings.IndexByte(expr[i:], '\n')
			if j < 0 {
				j = len(expr) - i
			}
			i += j
		case c == '$':
			// A Grafana variable: $name, ${name} or ${name:format}.
			i++
			if i < len(expr) && expr[i] == '{' {
				j := strings.IndexByte(expr[i:], '}')
				if j < 0 {
					return promqlRefs{}, fmt.Errorf("no closing '}' for the variable at %d", i-1)
				}
				i += j + 1
				break
			}
			for i < len(expr) && isIdentChar(expr[i]) {
				i++
			}
		case '0' <= c && c <= '9' || c == '.':
			// A number or a duration: 0.99, 1e3, 0x1f, 5m.
			for i < len(expr) && (isIdentChar(expr[i]) || expr[i] == '.') {
				i++
			}
		case isIdentStart(c):
			j := i
			for j < len(expr) && isIdentChar(expr[j]) {
				j++
			}
			word := expr[i:j]
			next := nextNonSpace(j)
			switch {
			case promqlGrouping[word]:
				i = next
				if i < len(expr) && expr[i] == '(' {
					k, err := labelList(i+1, ')')
					if err != nil {
						return promqlRefs{}, err
					}
					i = k
				}
			case promqlKeywords[word] || promqlFunctions[word]:
				i = j
			case next < len(expr) && expr[next] == '(':
				return promqlRefs{}, fmt.Errorf("unknown function %s", word)
			default:
				add(&refs.metrics, word)
				i = j
			}
		default:
			i++ // an operator, a parenthesis, a comma, a space
		}
	}
	return refs, nil
}

func TestPromQLReferences(t *testing.T) {
	tests := []struct {
		name            string
		expr            string
		metrics, labels []string
		err             bool
	}{
		{name: "bare selector", expr: "etcd_network_active_peers", metrics: []string{"etcd_network_active_peers"}},
		{
			name:    "matchers with Grafana variables",
			expr:    `etcd_network_active_peers{job=~"$job", Remote!="0"}`,
			metrics: []string{"etcd_network_active_peers"}, labels: []string{"job", "Remote"},
		},
		{
			name:    "range with Grafana's interval",
			expr:    `rate(x_total{a="b"}[$__rate_interval])`,
			metrics: []string{"x_total"}, labels: []string{"a"},
		},
		{name: "range in plain time", expr: "increase(x_total[5m])", metrics: []string{"x_total"}},
		{
			name:    "grouping before the operand",
			expr:    "sum by (instance, To) (rate(m_total[5m]))",
			metrics: []string{"m_total"}, labels: []string{"instance", "To"},
		},
		{
			name:    "grouping after the operand",
			expr:    "sum(rate(m_total[5m])) without (le)",
			metrics: []string{"m_total"}, labels: []string{"le"},
		},
		{
			name:    "histogram quantile",
			expr:    "histogram_quantile(0.99, sum by (le, To) (rate(h_seconds_bucket[5m])))",
			metrics: []string{"h_seconds_bucket"}, labels: []string{"le", "To"},
		},
		{
			name:    "binary operation with vector matching",
			expr:    "a_total / ignoring (Reason) group_left b_total > bool 0",
			metrics: []string{"a_total", "b_total"}, labels: []string{"Reason"},
		},
		{
			name:    "set operators and offset",
			expr:    "a and b offset 5m or c unless d * 1e3",
			metrics: []string{"a", "b", "c", "d"},
		},
		{
			name:    "strings that look like PromQL",
			expr:    `label_replace(m{x="rate(y)"}, "dst", "sum($1)", "src", "(.*)")`,
			metrics: []string{"m"}, labels: []string{"x"},
		},
		{name: "recording rule name", expr: "job:m:rate5m", metrics: []string{"job:m:rate5m"}},
		{name: "function alone", expr: "vector(1)"},
		{name: "unknown function", expr: "rat(m[5m])", err: true},
		{name: "unterminated string", expr: `m{job="x}`, err: true},
		{name: "unclosed matchers", expr: `m{job="x"`, err: true},
		{name: "unclosed range", expr: `rate(m[5m)`, err: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := promqlReferences(tc.expr)
			if tc.err {
				if err == nil {
					t.Fatalf("promqlReferences(%q) = %+v, want an error", tc.expr, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("promqlReferences(%q): %v", tc.expr, err)
			}
			if !slices.Equal(got.metrics, tc.metrics) {
				t.Errorf("metrics: got %q, want %q", got.metrics, tc.metrics)
			}
			if !slices.Equal(got.labels, tc.labels) {
				t.Errorf("labels: got %q, want %q", got.labels, tc.labels)
			}
		})
	}
}

// dashboardQuery is one PromQL query of a dashboard and where it is.
type dashboardQuery struct {
	where, expr string
}

// dashboardQueries walks a dashboard's JSON and returns every PromQL query
// in it: the expr of every panel target, rows' panels included, and the
// query of every query variable (label_values(expr, label), whose label is
// then a label expr's metrics must have). It fails the test on JSON that is
// not a dashboard of the shape these queries need.
func dashboardQueries(t *testing.T, file string) []dashboardQuery {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	type target struct {
		Expr       string `json:"expr"`
		RefID      string `json:"refId"`
		Datasource struct {
			UID string `json:"uid"`
		} `json:"datasource"`
	}
	type panel struct {
		ID         int    `json:"id"`
		Title      string `json:"title"`
		Type       string `json:"type"`
		Datasource struct {
			UID string `json:"uid"`
		} `json:"datasource"`
		Targets []target          `json:"targets"`
		Panels  []json.RawMessage `json:"panels"` // a collapsed row's
	}
	var dash struct {
		SchemaVersion int               `json:"schemaVersion"`
		UID           string            `json:"uid"`
		Title         string            `json:"title"`
		Panels        []json.RawMessage `json:"panels"`
		Templating    struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	// Grafana 10.3 and later write 39; older ones migrate down poorly.
	if dash.SchemaVersion < 39 || dash.UID == "" || dash.Title == "" {
		t.Errorf("%s: schemaVersion %d, uid %q, title %q; want 39 or more, a uid and a title", file, dash.SchemaVersion, dash.UID, dash.Title)
	}

	const dsVar = "${datasource}"
	var queries []dashboardQuery
	hasDatasourceVar := false
	for _, v := range dash.Templating.List {
		switch v.Type {
		case "datasource":
			var q string
			if err := json.Unmarshal(v.Query, &q); err != nil || q != "prometheus" || "${"+v.Name+"}" != dsVar {
				t.Errorf("%s: datasource variable %q of %s, want %s of prometheus", file, "${"+v.Name+"}", v.Query, dsVar)
			}
			hasDatasourceVar = true
		case "query":
			// Grafana writes a query variable's query as a string or,
			// since 10, as an object holding it.
			var q string
			if json.Unmarshal(v.Query, &q) != nil {
				var obj struct {
					Query string `json:"query"`
				}
				if err := json.Unmarshal(v.Query, &obj); err != nil {
					t.Fatalf("%s: variable %s: query %s: %v", file, v.Name, v.Query, err)
				}
				q = obj.Query
			}
			queries = append(queries, dashboardQuery{where: "variable " + v.Name, expr: q})
		}
	}
	if !hasDatasourceVar {
		t.Errorf("%s: no datasource variable: the dashboard would be bound to one Prometheus", file)
	}

	ids := map[int]string{}
	var walk func(raws []json.RawMessage)
	walk = func(raws []json.RawMessage) {
		for _, raw := range raws {
			var p panel
			if err := json.Unmarshal(raw, &p); err != nil {
				t.Fatalf("%s: panel: %v", file, err)
			}
			if other, dup := ids[p.ID]; dup {
				t.Errorf("%s: panels %q and %q share id %d", file, other, p.Title, p.ID)
			}
			ids[p.ID] = p.Title
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: panel %q queries nothing", file, p.Title)
			}
			if p.Datasource.UID != dsVar {
				t.Errorf("%s: panel %q: datasource %q, want %s", file, p.Title, p.Datasource.UID, dsVar)
			}
			for _, tg := range p.Targets {
				if tg.Datasource.UID != dsVar {
					t.Errorf("%s: panel %q, target %s: datasource %q, want %s", file, p.Title, tg.RefID, tg.Datasource.UID, dsVar)
				}
				queries = append(queries, dashboardQuery{where: fmt.Sprintf("panel %q, target %s", p.Title, tg.RefID), expr: tg.Expr})
			}
		}
	}
	walk(dash.Panels)
	return queries
}

// labelValuesQuery splits Grafana's label_values(expr, label) into its
// expression and label; ok is false for other queries.
func labelValuesQuery(q string) (expr, label string, ok bool) {
	rest, found := strings.CutPrefix(strings.TrimSpace(q), "label_values(")
	if !found || !strings.HasSuffix(rest, ")") {
		return "", "", false
	}
	rest = strings.TrimSuffix(rest, ")")
	comma := strings.LastIndexByte(rest, ',')
	if comma < 0 {
		return "", "", false
	}
	return strings.TrimSpace(rest[:comma]), strings.TrimSpace(rest[comma+1:]), true
}

// exportedMetrics gathers gs and returns every metric name a scrape shows,
// histograms as their _bucket, _sum and _count series, with the label names
// of each; le is a label of _bucket series only.
func exportedMetrics(gs ...prometheus.Gatherer) (map[string][]string, error) {
	out := map[string][]string{}
	addLabels := func(name string, labels ...string) {
		for _, l := range labels {
			if !slices.Contains(out[name], l) {
				out[name] = append(out[name], l)
			}
		}
		if out[name] == nil {
			out[name] = []string{}
		}
	}
	for _, g := range gs {
		mfs, err := g.Gather()
		if err != nil {
			return nil, err
		}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				var labels []string
				for _, l := range m.GetLabel() {
					labels = append(labels, l.GetName())
				}
				if mf.GetType() == dto.MetricType_HISTOGRAM {
					addLabels(mf.GetName()+"_bucket", append(labels, "le")...)
					addLabels(mf.GetName()+"_sum", labels...)
					addLabels(mf.GetName()+"_count", labels...)
					continue
				}
				addLabels(mf.GetName(), labels...)
			}
		}
	}
	return out, nil
}

// scrapeLabels are labels Prometheus adds to every series it scrapes.
var scrapeLabels = []string{"job", "instance"}

// checkDashboardQuery returns what is wrong with one query, given what is
// exported: a metric not exported, or a label that none of the query's
// metrics has (the query would be empty or group everything as one).
func checkDashboardQuery(q dashboardQuery, exported map[string][]string) []error {
	expr, varLabel, isLabelValues := labelValuesQuery(q.expr)
	if !isLabelValues {
		expr = q.expr
	}
	refs, err := promqlReferences(expr)
	if err != nil {
		return []error{fmt.Errorf("%s: %q: %v", q.where, q.expr, err)}
	}
	if len(refs.metrics) == 0 {
		return []error{fmt.Errorf("%s: %q queries no metric", q.where, q.expr)}
	}
	if isLabelValues {
		refs.labels = append(refs.labels, varLabel)
	}
	var errs []error
	var known []string // the labels of the query's exported metrics
	for _, name := range refs.metrics {
		labels, ok := exported[name]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: %s is not a metric the transport exports", q.where, name))
			continue
		}
		known = append(known, labels...)
	}
	if len(errs) > 0 {
		return errs
	}
	for _, l := range refs.labels {
		if !slices.Contains(known, l) && !slices.Contains(scrapeLabels, l) {
			errs = append(errs, fmt.Errorf("%s: label %s is not a label of %s (those are %v)", q.where, l, strings.Join(refs.metrics, ", "), known))
		}
	}
	return errs
}

// TestDashboardQueriesExportedMetrics drives two transports through what
// makes each of their metrics appear (streams up and broken, messages sent
// and dropped, probes, snapshots that succeed and fail), and checks that
// every query of every dashboard names only metrics and labels they export.
// Metrics appear as traffic creates their series, so the check is retried
// until it passes or the deadline comes; what is missing then is reported.
func TestDashboardQueriesExportedMetrics(t *testing.T) {
	var queries []dashboardQuery
	for _, f := range dashboardFiles {
		for _, q := range dashboardQueries(t, f) {
			queries = append(queries, dashboardQuery{where: f + ": " + q.where, expr: q.expr})
		}
	}
	if t.Failed() {
		return
	}

	regA, regB := prometheus.NewRegistry(), prometheus.NewRegistry()
	// A short read timeout: probes (and so round-trip samples) every 100
	// ms, link heartbeats every third of a second, so that a broken stream
	// is noticed quickly.
	fast := func(tr *Transport) { tr.ConnReadTimeout = time.Second }
	a := newNode(t, withID(1), withRegisterer(regA), withConfig(fast))
	b := newNode(t, withID(2), withRegisterer(regB), withConfig(fast), withStore(&memStore{}))
	// Member 3 never answers: what is sent to it fails.
	if err := a.tr.AddPeer(3, []string{"http://" + freeAddr(t)}); err != nil {
		t.Fatal(err)
	}
	connectStreams(t, a, b)

	a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgApp, 1, 2, 1, withEntry("x")), newMsg(raftpb.MsgHeartbeat, 1, 2, 1)})
	b.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgAppResp, 2, 1, 1)})
	a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 1, 9, 1)}) // 9 is unknown: dropped
	if err := <-a.tr.SendSnapshot(newSnapshot(1, 2, 7, 4096)); err != nil {
		t.Fatalf("SendSnapshot to 2: %v", err)
	}
	if err := <-a.tr.SendSnapshot(newSnapshot(1, 3, 8, 16)); err == nil {
		t.Fatal("SendSnapshot to the silent member 3 succeeded")
	}
	obsPostJunk(t, b.url) // a receive failure
	// Every connection to b breaks: b's stream writers fail (b's peer 1
	// disconnects), and a's stream readers dial again (reconnects).
	b.srv.CloseClientConnections()

	var problems []error
	deadline := time.Now().Add(20 * time.Second)
	for {
		exported, err := exportedMetrics(regA, regB)
		if err != nil {
			t.Fatalf("Gather: %v", err)
		}
		problems = problems[:0]
		for _, q := range queries {
			problems = append(problems, checkDashboardQuery(q, exported)...)
		}
		if len(problems) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(problems) > 0 {
		t.Error(errors.Join(problems...))
	}
	t.Logf("%d queries checked", len(queries))
}
