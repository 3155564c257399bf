package brokermetrics

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/yaml"

	"github.com/orderly-dev/orderly/controllers"
	"github.com/orderly-dev/orderly/internal/broker"
)

// exported lists every series name the manager's collectors can serve, a
// histogram's _bucket, _sum and _count included.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	b, err := broker.Open(broker.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	histograms := map[*prometheus.Desc]bool{publishLatency: true, consumeLatency: true, syncLatency: true}
	names := map[string]bool{}
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	add := func(c prometheus.Collector, histogram func(*prometheus.Desc) bool) {
		ch := make(chan *prometheus.Desc, 64)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			m := fqName.FindStringSubmatch(d.String())
			if m == nil {
				t.Fatalf("no name in %s", d)
			}
			names[m[1]] = true
			if histogram(d) {
				for _, s := range []string{"_bucket", "_sum", "_count"} {
					names[m[1]+s] = true
				}
			}
		}
	}
	add(New(b, nil), func(d *prometheus.Desc) bool { return histograms[d] })
	for _, c := range controllers.Collectors() {
		_, isHistogram := c.(*prometheus.HistogramVec)
		add(c, func(*prometheus.Desc) bool { return isHistogram })
	}
	return names
}

// A metric name in a PromQL expression: an identifier that is not a function,
// keyword or label (labels follow "by (", "{" or ","; functions are followed by
// "(").
var (
	identifier = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	labelLists = regexp.MustCompile(`(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)|\{[^}]*\}|"[^"]*"|\$\w+|\[[^\]]*\]`)
	keywords   = []string{"by", "without", "and", "or", "unless", "on", "ignoring", "bool", "offset", "le", "Inf"}
)

func metricsIn(expr string) []string {
	stripped := labelLists.ReplaceAllString(expr, " ")
	var out []string
	for _, loc := range identifier.FindAllStringIndex(stripped, -1) {
		name := stripped[loc[0]:loc[1]]
		rest := strings.TrimLeft(stripped[loc[1]:], " ")
		if strings.HasPrefix(rest, "(") || slices.Contains(keywords, name) {
			continue // a function or aggregation, or a keyword
		}
		if loc[0] > 0 && (stripped[loc[0]-1] >= '0' && stripped[loc[0]-1] <= '9' || stripped[loc[0]-1] == '.') {
			continue // the exponent or unit of a number
		}
		out = append(out, name)
	}
	return out
}

func TestMetricsInFindsTheMetrics(t *testing.T) {
	got := metricsIn(`histogram_quantile(0.99, sum by (le, instance) (rate(orderly_publish_duration_seconds_bucket{instance=~"$instance"}[5m]))) > 0.1 and orderly_x == 0`)
	if !slices.Equal(got, []string{"orderly_publish_duration_seconds_bucket", "orderly_x"}) {
		t.Fatalf("metricsIn: %q", got)
	}
}

// TestDashboardAndAlertsUseExportedMetrics keeps config/monitoring and the
// collectors from drifting apart: every metric a dashboard panel, its variables
// or an alert queries is one the manager serves.
func TestDashboardAndAlertsUseExportedMetrics(t *testing.T) {
	names := exported(t)
	var exprs []string

	raw, err := os.ReadFile("../../config/monitoring/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	panels := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
			panels++
		}
	}
	// Grafana's label_values(metric, label): the metric only.
	labelValues := regexp.MustCompile(`^label_values\(([^,]+),`)
	for _, v := range dash.Templating.List {
		if m := labelValues.FindStringSubmatch(v.Definition); m != nil {
			exprs = append(exprs, m[1])
		} else if v.Definition != "" {
			exprs = append(exprs, v.Definition)
		}
	}
	if panels < 20 {
		t.Fatalf("the dashboard has %d queries", panels)
	}

	raw, err = os.ReadFile("../../config/monitoring/prometheus-rule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rule struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Spec       struct {
			Groups []struct {
				Rules []struct {
					Alert string `json:"alert"`
					Expr  string `json:"expr"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(raw, &rule); err != nil {
		t.Fatalf("rule: %v", err)
	}
	if rule.APIVersion != "monitoring.coreos.com/v1" || rule.Kind != "PrometheusRule" {
		t.Fatalf("rule is %s %s", rule.APIVersion, rule.Kind)
	}
	var alerts []string
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			exprs = append(exprs, r.Expr)
		}
	}
	for _, want := range []string{"OrderlyConsumerBacklogGrowing", "OrderlyDeadLettersRising", "OrderlyPublishLatencyHigh",
		"OrderlyDiskNearlyFull", "OrderlyInstanceNotReady"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("alert %s missing (have %v)", want, alerts)
		}
	}

	for _, e := range exprs {
		ms := metricsIn(e)
		if len(ms) == 0 {
			t.Errorf("no metric in %q", e)
		}
		for _, m := range ms {
			if !names[m] {
				t.Errorf("%q queries %s, which the manager does not export", e, m)
			}
		}
	}
}
