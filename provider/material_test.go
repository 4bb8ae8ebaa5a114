package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource/sig"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/protobuf/types/known/structpb"
)

var uuidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// inputs: what the program sends for the default secure stack, with `changes` on top.
func inputs(changes props) props {
	news := props{
		"gossip":     true,
		"ca":         map[string]any{"common_name": "Consul CA dc1", "validity_days": float64(3650)},
		"brought_ca": nil,
		"server_cert": map[string]any{
			"common_name":       "server.dc1.consul",
			"dns_names":         []any{"server.dc1.consul", "consul-server.consul.svc"},
			"ip_addresses":      []any{"127.0.0.1"},
			"validity_days":     float64(825),
			"renew_before_days": float64(30),
		},
		"tokens": []any{"management", "agent-client"},
	}
	for k, v := range changes {
		news[k] = v
	}
	return news
}

func with(m map[string]any, key string, value any) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		out[k] = v
	}
	out[key] = value
	return out
}

func toStruct(t *testing.T, m props) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(m)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// create runs the provider's Create as the engine does, and returns the state.
func create(t *testing.T, s *server, news props) props {
	t.Helper()
	response, err := s.Create(context.Background(), &pulumirpc.CreateRequest{Type: resourceType, Properties: toStruct(t, news)})
	if err != nil {
		t.Fatal(err)
	}
	if !uuidPattern.MatchString(response.GetId()) {
		t.Fatalf("id %q is not a UUID", response.GetId())
	}
	return response.GetProperties().AsMap()
}

func update(t *testing.T, s *server, olds, news props) props {
	t.Helper()
	response, err := s.Update(context.Background(), &pulumirpc.UpdateRequest{Type: resourceType, Olds: toStruct(t, olds), News: toStruct(t, news)})
	if err != nil {
		t.Fatal(err)
	}
	return response.GetProperties().AsMap()
}

func diff(t *testing.T, s *server, olds, news props) *pulumirpc.DiffResponse {
	t.Helper()
	response, err := s.Diff(context.Background(), &pulumirpc.DiffRequest{Type: resourceType, Olds: toStruct(t, olds), News: toStruct(t, news)})
	if err != nil {
		t.Fatal(err)
	}
	return response
}

func certificate(t *testing.T, text any) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode([]byte(text.(string)))
	if block == nil {
		t.Fatalf("not PEM: %v", text)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func privateKey(t *testing.T, text any) *ecdsa.PrivateKey {
	t.Helper()
	block, _ := pem.Decode([]byte(text.(string)))
	if block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("not a PKCS#8 PEM key")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return key.(*ecdsa.PrivateKey)
}

func newServer() *server { return &server{now: time.Now} }

func TestCreateGeneratesEverythingAsked(t *testing.T) {
	state := create(t, newServer(), inputs(nil))

	key, err := base64.StdEncoding.DecodeString(state[gossipKeyOut].(string))
	if err != nil || len(key) != 32 {
		t.Fatalf("gossip key %v: %d bytes, %v", state[gossipKeyOut], len(key), err)
	}

	ca := certificate(t, state[caCertOut])
	if !ca.IsCA || ca.MaxPathLen != 0 || !ca.MaxPathLenZero || ca.Subject.CommonName != "Consul CA dc1" {
		t.Errorf("CA: IsCA %v, MaxPathLen %d, CN %q", ca.IsCA, ca.MaxPathLen, ca.Subject.CommonName)
	}
	if ca.KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("CA key usage %v", ca.KeyUsage)
	}
	if days := time.Until(ca.NotAfter).Hours() / 24; days < 3649 || days > 3650 {
		t.Errorf("CA lives %.1f days, want 3650", days)
	}
	if !privateKey(t, state[caKeyOut]).PublicKey.Equal(ca.PublicKey) {
		t.Error("the CA key does not belong to the CA certificate")
	}
	if state[caNotAfterOut] != ca.NotAfter.UTC().Format(notAfterTimeLayout) {
		t.Errorf("ca_not_after %v, certificate %v", state[caNotAfterOut], ca.NotAfter)
	}

	cert := certificate(t, state[serverCertOut])
	if err := cert.CheckSignatureFrom(ca); err != nil {
		t.Errorf("the server certificate is not signed by the CA: %v", err)
	}
	if !slices.Equal(cert.DNSNames, []string{"server.dc1.consul", "consul-server.consul.svc"}) ||
		len(cert.IPAddresses) != 1 || cert.IPAddresses[0].String() != "127.0.0.1" || cert.Subject.CommonName != "server.dc1.consul" {
		t.Errorf("server certificate names: CN %q, DNS %v, IP %v", cert.Subject.CommonName, cert.DNSNames, cert.IPAddresses)
	}
	if cert.IsCA || !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("server certificate: IsCA %v, ext key usage %v", cert.IsCA, cert.ExtKeyUsage)
	}
	if days := time.Until(cert.NotAfter).Hours() / 24; days < 824 || days > 825 {
		t.Errorf("server certificate lives %.1f days, want 825", days)
	}
	if !privateKey(t, state[serverKeyOut]).PublicKey.Equal(cert.PublicKey) {
		t.Error("the server key does not belong to the server certificate")
	}

	secrets, accessors := state[tokenSecretsOut].(map[string]any), state[tokenAccessorsOut].(map[string]any)
	ids := map[any]bool{}
	for _, name := range []string{"management", "agent-client"} {
		for _, id := range []any{secrets[name], accessors[name]} {
			if s, _ := id.(string); !uuidPattern.MatchString(s) || ids[id] {
				t.Errorf("token %s: %v is not a fresh UUID", name, id)
			}
			ids[id] = true
		}
	}
	if len(secrets) != 2 || len(accessors) != 2 {
		t.Errorf("tokens %v / %v", secrets, accessors)
	}
	if state["tokens"] == nil || state["server_cert"] == nil {
		t.Error("the inputs are not echoed in the state")
	}
}

func TestSameInputsChangeNothingAndKeepTheCAStable(t *testing.T) {
	s := newServer()
	state := create(t, s, inputs(nil))
	response := diff(t, s, state, inputs(nil))
	if response.GetChanges() != pulumirpc.DiffResponse_DIFF_NONE || len(response.GetReplaces()) != 0 {
		t.Errorf("diff %v", response)
	}
	if !slices.Equal(response.GetStables(), []string{caCertOut, caNotAfterOut}) {
		t.Errorf("stables %v", response.GetStables())
	}
}

func TestNewNamesReissueOnlyTheServerCertificate(t *testing.T) {
	s := newServer()
	state := create(t, s, inputs(nil))
	news := inputs(props{"server_cert": with(inputs(nil)["server_cert"].(map[string]any), "dns_names", []any{"a", "b"})})
	response := diff(t, s, state, news)
	if response.GetChanges() != pulumirpc.DiffResponse_DIFF_SOME || len(response.GetReplaces()) != 0 {
		t.Fatalf("diff %v", response)
	}
	if !slices.Equal(response.GetDiffs(), []string{serverCertOut, serverKeyOut, serverNotAfterOut}) {
		t.Errorf("diffs %v", response.GetDiffs())
	}
	updated := update(t, s, state, news)
	if updated[serverCertOut] == state[serverCertOut] || updated[serverKeyOut] == state[serverKeyOut] {
		t.Error("the server certificate was not re-issued")
	}
	for _, kept := range []string{gossipKeyOut, caCertOut, caKeyOut} {
		if updated[kept] != state[kept] {
			t.Errorf("%s changed", kept)
		}
	}
	if !slices.Equal(certificate(t, updated[serverCertOut]).DNSNames, []string{"a", "b"}) {
		t.Error("the new names are not in the certificate")
	}
}

func TestRenewsTheServerCertificateInsideTheWindow(t *testing.T) {
	s := newServer()
	state := create(t, s, inputs(nil))
	request := inputs(nil)["server_cert"].(map[string]any)
	now := time.Now()
	if parts := due(state, inputs(nil), now); len(parts) != 0 {
		t.Errorf("due right after create: %v", parts)
	}
	// A wider window alone re-issues nothing until the certificate is inside it.
	if parts := due(state, inputs(props{"server_cert": with(request, "renew_before_days", float64(60))}), now); len(parts) != 0 {
		t.Errorf("a 60-day window: %v", parts)
	}
	if parts := due(state, inputs(props{"server_cert": with(request, "renew_before_days", float64(825))}), now); !slices.Equal(parts, []string{partServerCert}) {
		t.Errorf("a window as long as the validity: %v", parts)
	}
	// 800 days later, 25 days are left: less than the 30-day window.
	if parts := due(state, inputs(nil), now.AddDate(0, 0, 800)); !slices.Equal(parts, []string{partServerCert}) {
		t.Errorf("800 days later: %v", parts)
	}

	expiring := with(state, serverNotAfterOut, now.AddDate(0, 0, 29).UTC().Format(notAfterTimeLayout))
	if diff(t, s, expiring, inputs(nil)).GetChanges() != pulumirpc.DiffResponse_DIFF_SOME {
		t.Fatal("a certificate 29 days from expiry is not due")
	}
	renewed := update(t, s, expiring, inputs(nil))
	if renewed[serverNotAfterOut].(string) <= expiring[serverNotAfterOut].(string) {
		t.Errorf("renewed until %v", renewed[serverNotAfterOut])
	}
	if renewed[caCertOut] != state[caCertOut] || renewed[gossipKeyOut] != state[gossipKeyOut] {
		t.Error("renewal changed the CA or the gossip key")
	}
	if err := certificate(t, renewed[serverCertOut]).CheckSignatureFrom(certificate(t, state[caCertOut])); err != nil {
		t.Errorf("the renewed certificate is not signed by the CA: %v", err)
	}
}

func TestTokensAreKeptAddedAndDroppedByName(t *testing.T) {
	s := newServer()
	state := create(t, s, inputs(nil))
	news := inputs(props{"tokens": []any{"management", "service-web"}})
	if parts := due(state, news, time.Now()); !slices.Equal(parts, []string{partTokens, partDropped}) {
		t.Errorf("due %v", parts)
	}
	updated := update(t, s, state, news)
	secrets, oldSecrets := updated[tokenSecretsOut].(map[string]any), state[tokenSecretsOut].(map[string]any)
	if len(secrets) != 2 || len(updated[tokenAccessorsOut].(map[string]any)) != 2 {
		t.Errorf("tokens %v", secrets)
	}
	if secrets["management"] != oldSecrets["management"] {
		t.Error("the management token changed")
	}
	if secrets["service-web"] == nil || secrets["service-web"] == oldSecrets["agent-client"] {
		t.Error("service-web has no new token")
	}
	if updated[serverCertOut] != state[serverCertOut] {
		t.Error("a token change re-issued the server certificate")
	}
}

func TestANewCARequestReissuesCAAndCertificate(t *testing.T) {
	s := newServer()
	state := create(t, s, inputs(nil))
	news := inputs(props{"ca": map[string]any{"common_name": "Consul CA dc2", "validity_days": float64(3650)}})
	if parts := due(state, news, time.Now()); !slices.Equal(parts, []string{partCA, partServerCert}) {
		t.Errorf("due %v", parts)
	}
	if stables := diff(t, s, state, news).GetStables(); len(stables) != 0 {
		t.Errorf("stables %v", stables)
	}
	updated := update(t, s, state, news)
	if err := certificate(t, updated[serverCertOut]).CheckSignatureFrom(certificate(t, updated[caCertOut])); err != nil {
		t.Errorf("the server certificate is not signed by the new CA: %v", err)
	}
}

func TestABroughtCASignsTheServerCertificateAndIsKeptAsGiven(t *testing.T) {
	brought, err := certificateAuthority("Our CA", 100, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	state := create(t, newServer(), inputs(props{"ca": nil, "brought_ca": map[string]any{"cert_pem": brought.certPEM, "key_pem": brought.keyPEM}}))
	if state[caCertOut] != brought.certPEM || state[caKeyOut] != brought.keyPEM {
		t.Error("the brought CA is not the CA")
	}
	if err := certificate(t, state[serverCertOut]).CheckSignatureFrom(certificate(t, brought.certPEM)); err != nil {
		t.Errorf("not signed by the brought CA: %v", err)
	}
}

func TestSwitchedOffPartsAreDropped(t *testing.T) {
	s := newServer()
	state := create(t, s, inputs(nil))
	news := inputs(props{"gossip": false, "ca": nil, "server_cert": nil, "tokens": []any{}})
	if parts := due(state, news, time.Now()); !slices.Equal(parts, []string{partDropped}) {
		t.Errorf("due %v", parts)
	}
	updated := update(t, s, state, news)
	for _, out := range []string{gossipKeyOut, caCertOut, caKeyOut, caNotAfterOut, serverCertOut, serverKeyOut, serverNotAfterOut} {
		if updated[out] != nil {
			t.Errorf("%s kept after being switched off", out)
		}
	}
	if len(updated[tokenSecretsOut].(map[string]any)) != 0 {
		t.Error("tokens kept after being dropped")
	}
}

func TestPreviewsGenerateNothingAndShowWhatWouldChangeAsUnknown(t *testing.T) {
	s := newServer()
	response, err := s.Create(context.Background(), &pulumirpc.CreateRequest{Type: resourceType, Properties: toStruct(t, inputs(nil)), Preview: true})
	if err != nil {
		t.Fatal(err)
	}
	previewed := response.GetProperties().AsMap()
	for _, out := range outputNames {
		if previewed[out] != sig.UnknownStringValue {
			t.Errorf("a new stack's preview shows %s as %v, want unknown", out, previewed[out])
		}
	}

	state := create(t, s, inputs(nil))
	expiring := with(state, serverNotAfterOut, time.Now().AddDate(0, 0, 1).UTC().Format(notAfterTimeLayout))
	updated, err := s.Update(context.Background(), &pulumirpc.UpdateRequest{Type: resourceType, Olds: toStruct(t, expiring), News: toStruct(t, inputs(nil)), Preview: true})
	if err != nil {
		t.Fatal(err)
	}
	preview := updated.GetProperties().AsMap()
	if preview[serverCertOut] != sig.UnknownStringValue || preview[caCertOut] != state[caCertOut] || preview[gossipKeyOut] != state[gossipKeyOut] {
		t.Error("a renewal's preview should show only the server certificate as unknown")
	}
}

func TestOtherResourceTypesAreRefused(t *testing.T) {
	_, err := newServer().Check(context.Background(), &pulumirpc.CheckRequest{Type: "consul-keys:index:Other"})
	if err == nil {
		t.Error("an unknown type was accepted")
	}
}
