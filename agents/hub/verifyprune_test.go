package hub_test

import (
	"sync"
	"testing"
	"time"

	"github.com/sendense/sendense/agents/hub"
	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/retention"
)

// TestVerifyWaitsForPrune: a verification of a VM waits while a prune of
// it runs (a merge rewrites the files it would read), then leaves out the
// points that prune removed and verifies the kept one; it never reports a
// point as failed because a prune changed it under the read.
func TestVerifyWaitsForPrune(t *testing.T) {
	e := newForgetEnv(t, 3)
	ctx := testCtx(t)
	entered, resume := make(chan struct{}), make(chan struct{})
	first := true
	e.startHub(func(step string) error {
		if step == hub.StepIntent && first {
			first = false
			close(entered)
			<-resume
		}
		return nil
	})
	forgot := make(chan error, 1)
	go func() {
		_, err := e.client.Forget(ctx, repoapi.ForgetRequest{VM: forgetVM.Name, Policy: retention.Policy{Last: 1}})
		forgot <- err
	}()
	<-entered
	var resumeOnce sync.Once
	unblock := func() { resumeOnce.Do(func() { close(resume) }) }
	defer unblock() // a failure below must not leave the prune (and the hub's stop) waiting
	type result struct {
		rep repoapi.VerifyReply
		err error
	}
	verified := make(chan result, 1)
	go func() {
		rep, err := e.client.Verify(ctx, repoapi.VerifyRequest{VM: forgetVM.Name})
		verified <- result{rep, err}
	}()
	select {
	case r := <-verified:
		t.Fatalf("verify answered while the prune held its first point: %+v %v", r.rep, r.err)
	case <-time.After(time.Second):
	}
	unblock()
	if err := <-forgot; err != nil {
		t.Fatal(err)
	}
	r := <-verified
	if r.err != nil {
		t.Fatal(r.err)
	}
	if len(r.rep.Results) != len(forgetDisks) {
		t.Fatalf("verify after the prune: %+v, want the kept point's %d disks", r.rep.Results, len(forgetDisks))
	}
	for _, res := range r.rep.Results {
		if res.JobID != e.jobs[2].ID || res.Status == repoapi.VerifyFailed {
			t.Errorf("verify result %+v, want job %s not failed", res, e.jobs[2].ID)
		}
	}
	e.requireRemoved(e.jobs[0].ID, e.jobs[1].ID)
	e.requireKept(e.jobs[2].ID)
}
