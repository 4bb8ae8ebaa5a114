package main

// consul-keys:index:ChangeGuard refuses, before anything changes, a setting change that would
// disrupt a deployed cluster. Its inputs (the plain maps the engine sends) are
//   values   setting name -> its value, as the program renders it
//   reasons  setting name -> why its change is refused, and the procedure to follow instead
//   allowed  setting names whose change this update may apply
// Check compares the new values with the ones in the state (the engine's olds, absent on the
// first deployment) and answers a failure for each guarded setting that changed without being
// allowed: the engine then stops the update before it takes any other step.

import (
	"fmt"
	"reflect"
	"slices"
	"sort"

	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
)

const (
	guardType    = "consul-keys:index:ChangeGuard"
	guardValues  = "values"
	guardReasons = "reasons"
	guardAllowed = "allowed"
)

// refusedChanges: one failure for each setting whose value in `news` differs from `olds` and is
// not in the allowed list, in the order of the setting names.
func refusedChanges(olds, news props) []*pulumirpc.CheckFailure {
	oldValues, _ := olds[guardValues].(map[string]any)
	newValues, _ := news[guardValues].(map[string]any)
	reasons, _ := news[guardReasons].(map[string]any)
	allowed, _ := news[guardAllowed].([]any)
	names := make([]string, 0, len(newValues))
	for name := range newValues {
		names = append(names, name)
	}
	sort.Strings(names)
	var failures []*pulumirpc.CheckFailure
	for _, name := range names {
		old, deployed := oldValues[name]
		if !deployed || reflect.DeepEqual(old, newValues[name]) || slices.Contains(allowed, any(name)) {
			continue
		}
		failures = append(failures, &pulumirpc.CheckFailure{
			Reason: fmt.Sprintf("%s: %v -> %v on a deployed stack is refused: %v", name, old, newValues[name], reasons[name]),
		})
	}
	return failures
}

// guardChanged: whether the state must be updated to `news`.
func guardChanged(olds, news props) bool {
	return !reflect.DeepEqual(olds, news)
}
