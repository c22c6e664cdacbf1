package novacli

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/kubenova/kubenova/internal/consolelog"
)

func TestConsoleLogAsksForWhatTheFlagsSay(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want consolelog.Options
	}{
		{[]string{"console-log", "web"}, consolelog.Options{TailLines: -1}},
		{[]string{"console-log", "web", "--tail", "20", "-f"}, consolelog.Options{TailLines: 20, Follow: true}},
		{[]string{"console-log", "web", "--tail=0", "--follow"}, consolelog.Options{TailLines: 0, Follow: true}},
	} {
		h := newHarness(t)
		var asked consolelog.Options
		var where string
		h.opts.openConsoleLog = func(_ context.Context, namespace, name string, o consolelog.Options) (io.ReadCloser, error) {
			asked, where = o, namespace+"/"+name
			return io.NopCloser(strings.NewReader("booted\nalive seq=1\n")), nil
		}
		if err := h.run(tc.args...); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if asked != tc.want || where != "default/web" {
			t.Errorf("%v asked %+v of %s, want %+v of default/web", tc.args, asked, where, tc.want)
		}
		if h.out.String() != "booted\nalive seq=1\n" {
			t.Errorf("%v printed %q", tc.args, h.out.String())
		}
	}
	h := newHarness(t)
	h.opts.openConsoleLog = func(context.Context, string, string, consolelog.Options) (io.ReadCloser, error) {
		t.Fatal("asked with a bad --tail")
		return nil, nil
	}
	if err := h.run("console-log", "web", "--tail", "-5"); err == nil || !strings.Contains(err.Error(), "--tail") {
		t.Fatalf("--tail -5: %v", err)
	}
}
