package main

import (
	"context"
	"strings"
	"testing"

	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/protobuf/types/known/structpb"
)

func guardInputs(storage string, tls bool, allowed ...any) props {
	return props{
		guardValues: map[string]any{"consul:serverStorageSize": storage, "consul:tls": tls},
		guardReasons: map[string]any{
			"consul:serverStorageSize": "it would delete every server at once; see the README",
			"consul:tls":               "it would split the cluster; see the README",
		},
		guardAllowed: allowed,
	}
}

func check(t *testing.T, olds, news props) *pulumirpc.CheckResponse {
	t.Helper()
	request := &pulumirpc.CheckRequest{Type: guardType, News: toStruct(t, news)}
	if olds != nil {
		request.Olds = toStruct(t, olds)
	}
	response, err := (&server{}).Check(context.Background(), request)
	if err != nil {
		t.Fatal(err)
	}
	return response
}

func TestTheFirstDeploymentPassesTheGuard(t *testing.T) {
	if failures := check(t, nil, guardInputs("1Gi", true)).GetFailures(); len(failures) != 0 {
		t.Fatalf("a stack with no state was refused: %v", failures)
	}
}

func TestAnUnchangedValuePassesAndAChangedOneIsRefusedWithBothValuesAndTheReason(t *testing.T) {
	if failures := check(t, guardInputs("1Gi", true), guardInputs("1Gi", true)).GetFailures(); len(failures) != 0 {
		t.Fatalf("unchanged values were refused: %v", failures)
	}
	failures := check(t, guardInputs("1Gi", true), guardInputs("2Gi", false)).GetFailures()
	if len(failures) != 2 {
		t.Fatalf("want a failure for each of the two changed settings, got %v", failures)
	}
	want := "consul:serverStorageSize: 1Gi -> 2Gi on a deployed stack is refused: it would delete every server at once; see the README"
	if failures[0].GetReason() != want {
		t.Fatalf("reason %q, want %q", failures[0].GetReason(), want)
	}
	if !strings.HasPrefix(failures[1].GetReason(), "consul:tls: true -> false ") {
		t.Fatalf("second reason %q", failures[1].GetReason())
	}
}

func TestAnAllowedChangePassesAndOnlyIt(t *testing.T) {
	failures := check(t, guardInputs("1Gi", true), guardInputs("2Gi", false, "consul:serverStorageSize")).GetFailures()
	if len(failures) != 1 || !strings.HasPrefix(failures[0].GetReason(), "consul:tls:") {
		t.Fatalf("want only the tls change refused, got %v", failures)
	}
}

func TestANewlyGuardedSettingIsNotRefused(t *testing.T) {
	olds := guardInputs("1Gi", true)
	delete(olds[guardValues].(map[string]any), "consul:tls")
	if failures := check(t, olds, guardInputs("1Gi", false)).GetFailures(); len(failures) != 0 {
		t.Fatalf("a setting the state did not guard yet was refused: %v", failures)
	}
}

func TestTheGuardKeepsItsInputsAsItsState(t *testing.T) {
	news := toStruct(t, guardInputs("2Gi", true))
	created, err := (&server{}).Create(context.Background(), &pulumirpc.CreateRequest{Type: guardType, Properties: news})
	if err != nil || created.GetId() == "" || !guardEqual(created.GetProperties(), news) {
		t.Fatalf("create: %v %v", created, err)
	}
	olds := toStruct(t, guardInputs("1Gi", true))
	diff, err := (&server{}).Diff(context.Background(), &pulumirpc.DiffRequest{Type: guardType, Olds: olds, News: news})
	if err != nil || diff.GetChanges() != pulumirpc.DiffResponse_DIFF_SOME {
		t.Fatalf("diff: %v %v", diff, err)
	}
	same, _ := (&server{}).Diff(context.Background(), &pulumirpc.DiffRequest{Type: guardType, Olds: news, News: news})
	if same.GetChanges() != pulumirpc.DiffResponse_DIFF_NONE {
		t.Fatalf("equal inputs differ: %v", same)
	}
	updated, err := (&server{}).Update(context.Background(), &pulumirpc.UpdateRequest{Type: guardType, Olds: olds, News: news})
	if err != nil || !guardEqual(updated.GetProperties(), news) {
		t.Fatalf("update: %v %v", updated, err)
	}
}

func guardEqual(a, b *structpb.Struct) bool {
	return !guardChanged(a.AsMap(), b.AsMap())
}
