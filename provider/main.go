// pulumi-resource-consul-keys: the Pulumi resource provider for the key material of a Consul
// cluster (gossip key, CA, server certificate, ACL token IDs), one resource per stack:
// consul-keys:index:KeyMaterial; and for the guard of disruptive setting changes,
// consul-keys:index:ChangeGuard (guard.go).
//
// Create generates every part the inputs ask for. An update generates only what is due (see
// due): a new token for a new name, the CA when its request changes, the server certificate when
// its request or CA changes or when it expires within its renewal window. Everything else is
// kept from the state, where the engine stores the secret outputs encrypted.
package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource/sig"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi/provider"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
)

const (
	name         = "consul-keys"
	resourceType = "consul-keys:index:KeyMaterial"
)

// version is set at build time (-X main.version=...), from consul/generated.py's PROVIDER_VERSION.
var version = "0.0.0-dev"

func main() {
	err := provider.Main(name, func(*provider.HostClient) (pulumirpc.ResourceProviderServer, error) {
		return &server{now: time.Now}, nil
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}

type server struct {
	pulumirpc.UnimplementedResourceProviderServer
	now func() time.Time
}

func (s *server) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: version}, nil
}

func (s *server) CheckConfig(_ context.Context, req *pulumirpc.CheckRequest) (*pulumirpc.CheckResponse, error) {
	return &pulumirpc.CheckResponse{Inputs: req.GetNews()}, nil
}

func (s *server) DiffConfig(context.Context, *pulumirpc.DiffRequest) (*pulumirpc.DiffResponse, error) {
	return &pulumirpc.DiffResponse{Changes: pulumirpc.DiffResponse_DIFF_NONE}, nil
}

// Configure: secrets arrive as plain values (the program marks the secret outputs), and Create
// and Update take part in previews, answering with unknowns for what they would generate.
func (s *server) Configure(context.Context, *pulumirpc.ConfigureRequest) (*pulumirpc.ConfigureResponse, error) {
	return &pulumirpc.ConfigureResponse{SupportsPreview: true}, nil
}

func checkType(t string) error {
	if t != resourceType && t != guardType {
		return fmt.Errorf("%s has no resource type %q (only %s and %s)", name, t, resourceType, guardType)
	}
	return nil
}

func (s *server) Check(_ context.Context, req *pulumirpc.CheckRequest) (*pulumirpc.CheckResponse, error) {
	if err := checkType(req.GetType()); err != nil {
		return nil, err
	}
	response := &pulumirpc.CheckResponse{Inputs: req.GetNews()}
	if req.GetType() == guardType {
		response.Failures = refusedChanges(req.GetOlds().AsMap(), req.GetNews().AsMap())
	}
	return response, nil
}

func (s *server) Diff(_ context.Context, req *pulumirpc.DiffRequest) (*pulumirpc.DiffResponse, error) {
	if req.GetType() == guardType {
		if guardChanged(req.GetOlds().AsMap(), req.GetNews().AsMap()) {
			return &pulumirpc.DiffResponse{Changes: pulumirpc.DiffResponse_DIFF_SOME}, nil
		}
		return &pulumirpc.DiffResponse{Changes: pulumirpc.DiffResponse_DIFF_NONE}, nil
	}
	parts := due(req.GetOlds().AsMap(), req.GetNews().AsMap(), s.now())
	response := &pulumirpc.DiffResponse{Changes: pulumirpc.DiffResponse_DIFF_NONE}
	if len(parts) > 0 {
		response.Changes = pulumirpc.DiffResponse_DIFF_SOME
		response.Diffs = changedOutputs(parts)
	}
	// The CA stays what it is unless its request changes: known in previews, so the program can
	// warn about its expiry even when something else is due.
	if !slices.Contains(parts, partCA) {
		response.Stables = []string{caCertOut, caNotAfterOut}
	}
	return response, nil
}

// changedOutputs: the outputs an update of `parts` replaces, as the engine shows them.
func changedOutputs(parts []string) []string {
	byPart := map[string][]string{
		partGossip:     {gossipKeyOut},
		partCA:         {caCertOut, caKeyOut, caNotAfterOut},
		partServerCert: {serverCertOut, serverKeyOut, serverNotAfterOut},
		partTokens:     {tokenAccessorsOut, tokenSecretsOut},
		partDropped:    {},
	}
	var changed []string
	for _, part := range parts {
		changed = append(changed, byPart[part]...)
	}
	return changed
}

// answer: the inputs echoed with the outputs; in a preview, what would be generated is unknown.
func answer(news props, outs props, parts []string, preview bool) (*structpb.Struct, error) {
	merged := props{}
	for k, v := range news {
		merged[k] = v
	}
	for k, v := range outs {
		merged[k] = v
	}
	if preview {
		for _, out := range changedOutputs(parts) {
			merged[out] = sig.UnknownStringValue
		}
	}
	return structpb.NewStruct(merged)
}

func (s *server) Create(_ context.Context, req *pulumirpc.CreateRequest) (*pulumirpc.CreateResponse, error) {
	if err := checkType(req.GetType()); err != nil {
		return nil, err
	}
	if req.GetType() == guardType {
		// The guard's state is its inputs; it has nothing outside the state.
		return &pulumirpc.CreateResponse{Id: "change-guard", Properties: req.GetProperties()}, nil
	}
	properties, err := s.material(props{}, req.GetProperties().AsMap(), allParts, req.GetPreview())
	if err != nil {
		return nil, err
	}
	id := ""
	if !req.GetPreview() {
		if id, err = tokenID(); err != nil {
			return nil, err
		}
	}
	return &pulumirpc.CreateResponse{Id: id, Properties: properties}, nil
}

func (s *server) Update(_ context.Context, req *pulumirpc.UpdateRequest) (*pulumirpc.UpdateResponse, error) {
	if err := checkType(req.GetType()); err != nil {
		return nil, err
	}
	if req.GetType() == guardType {
		return &pulumirpc.UpdateResponse{Properties: req.GetNews()}, nil
	}
	olds, news := req.GetOlds().AsMap(), req.GetNews().AsMap()
	properties, err := s.material(olds, news, due(olds, news, s.now()), req.GetPreview())
	if err != nil {
		return nil, err
	}
	return &pulumirpc.UpdateResponse{Properties: properties}, nil
}

// material: the new state for `news`, generating `parts`; a preview generates nothing and answers
// unknown for what it would generate.
func (s *server) material(olds, news props, parts []string, preview bool) (*structpb.Struct, error) {
	generating := parts
	if preview {
		generating = nil
	}
	outs, err := generate(olds, news, generating, s.now())
	if err != nil {
		return nil, err
	}
	return answer(news, outs, parts, preview)
}

// Read (refresh, import): the material exists only in the state, so the state is the truth.
func (s *server) Read(_ context.Context, req *pulumirpc.ReadRequest) (*pulumirpc.ReadResponse, error) {
	return &pulumirpc.ReadResponse{Id: req.GetId(), Properties: req.GetProperties(), Inputs: req.GetInputs()}, nil
}

// Delete: nothing outside the state to remove.
func (s *server) Delete(context.Context, *pulumirpc.DeleteRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (s *server) Cancel(context.Context, *emptypb.Empty) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}
