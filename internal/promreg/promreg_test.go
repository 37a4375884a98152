package promreg

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestRegisterReusesAndRefusesConflicts(t *testing.T) {
	reg := prometheus.NewRegistry()
	opts := prometheus.CounterOpts{Name: "x_total", Help: "x"}
	first := Register(reg, prometheus.NewCounter(opts))
	first.Add(2)
	again := Register(reg, prometheus.NewCounter(opts))
	if again != first {
		t.Fatal("second registration did not return the registered counter")
	}
	defer func() {
		if recover() == nil {
			t.Error("a conflicting registration (same name, other help) did not panic")
		}
	}()
	Register(reg, prometheus.NewCounter(prometheus.CounterOpts{Name: "x_total", Help: "other"}))
}
