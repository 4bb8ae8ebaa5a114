package main

// The key material of one Consul cluster: what is due on an update, and how each part is made.
//
// Inputs and outputs are the plain maps the engine sends (structpb's AsMap): the inputs are
//   gossip       bool: generate a gossip key
//   ca           {common_name, validity_days} or null: generate a CA
//   brought_ca   {cert_pem, key_pem} or null: use this CA instead
//   server_cert  {common_name, dns_names, ip_addresses, validity_days, renew_before_days} or null
//   tokens       names of ACL tokens to generate an AccessorID and a SecretID for
// and the outputs are the inputs echoed, plus the names in outputNames.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"reflect"
	"slices"
	"time"
)

const (
	gossipKeyOut       = "gossip_key"
	caCertOut          = "ca_cert_pem"
	caKeyOut           = "ca_key_pem"
	caNotAfterOut      = "ca_not_after"
	serverCertOut      = "server_cert_pem"
	serverKeyOut       = "server_key_pem"
	serverNotAfterOut  = "server_cert_not_after"
	tokenAccessorsOut  = "token_accessors"
	tokenSecretsOut    = "token_secrets"
	gossipKeyBytes     = 32
	notBeforeBackdate  = 5 * time.Minute
	notAfterTimeLayout = "2006-01-02T15:04:05+00:00"
)

// The parts an update can generate anew; "dropped" means a part was switched off or a token
// is no longer asked for.
const (
	partGossip     = "gossip"
	partCA         = "ca"
	partServerCert = "server_cert"
	partTokens     = "tokens"
	partDropped    = "dropped"
)

var (
	allParts    = []string{partGossip, partCA, partServerCert, partTokens}
	outputNames = []string{
		gossipKeyOut, caCertOut, caKeyOut, caNotAfterOut, serverCertOut, serverKeyOut, serverNotAfterOut,
		tokenAccessorsOut, tokenSecretsOut,
	}
)

type props = map[string]any

func str(m props, key string) string {
	s, _ := m[key].(string)
	return s
}

func object(m props, key string) props {
	o, _ := m[key].(map[string]any)
	return o
}

func names(m props, key string) []string {
	var out []string
	switch v := m[key].(type) {
	case []any:
		for _, item := range v {
			if s, ok := item.(string); ok {
				out = append(out, s)
			}
		}
	case map[string]any:
		for name := range v {
			out = append(out, name)
		}
	}
	return out
}

func number(m props, key string) (int, error) {
	v, ok := m[key].(float64)
	if !ok || v != float64(int(v)) {
		return 0, fmt.Errorf("%s must be a whole number, got %v", key, m[key])
	}
	return int(v), nil
}

// expiresWithin: whether an expiry (RFC 3339) is less than `days` after `now`; true when there is none.
func expiresWithin(notAfter string, days float64, now time.Time) bool {
	if notAfter == "" {
		return true
	}
	t, err := time.Parse(time.RFC3339, notAfter)
	if err != nil {
		return true
	}
	return t.Sub(now) < time.Duration(days*24*float64(time.Hour))
}

// certificateFields: what the certificate itself says (the renewal window is not part of it).
func certificateFields(request props) props {
	if request == nil {
		return nil
	}
	fields := props{}
	for k, v := range request {
		if k != "renew_before_days" {
			fields[k] = v
		}
	}
	return fields
}

func missing(wanted, have []string) bool {
	for _, name := range wanted {
		if !slices.Contains(have, name) {
			return true
		}
	}
	return false
}

// due: the parts an update from `olds` (the state) to `news` (the inputs) must generate anew.
func due(olds, news props, now time.Time) []string {
	var parts []string
	if news["gossip"] == true && str(olds, gossipKeyOut) == "" {
		parts = append(parts, partGossip)
	}
	wantsCA := object(news, "ca") != nil || object(news, "brought_ca") != nil
	caChanged := !reflect.DeepEqual(news["ca"], olds["ca"]) || !reflect.DeepEqual(news["brought_ca"], olds["brought_ca"])
	if wantsCA && (caChanged || str(olds, caCertOut) == "") {
		parts = append(parts, partCA)
	}
	request := object(news, "server_cert")
	if request != nil {
		renewBefore, _ := request["renew_before_days"].(float64)
		if slices.Contains(parts, partCA) ||
			!reflect.DeepEqual(certificateFields(request), certificateFields(object(olds, "server_cert"))) ||
			expiresWithin(str(olds, serverNotAfterOut), renewBefore, now) {
			parts = append(parts, partServerCert)
		}
	}
	wantedTokens, oldTokens := names(news, "tokens"), names(olds, tokenSecretsOut)
	if missing(wantedTokens, oldTokens) {
		parts = append(parts, partTokens)
	}
	dropped := (str(olds, gossipKeyOut) != "" && news["gossip"] != true) ||
		(str(olds, caCertOut) != "" && !wantsCA) ||
		(str(olds, serverCertOut) != "" && request == nil) ||
		missing(oldTokens, wantedTokens)
	if dropped {
		parts = append(parts, partDropped)
	}
	return parts
}

// generate: the outputs for inputs `news`, what `parts` names made anew and the rest kept from `olds`.
func generate(olds, news props, parts []string, now time.Time) (props, error) {
	outs := props{}
	for _, name := range outputNames {
		outs[name] = olds[name]
	}
	var err error
	if news["gossip"] != true {
		outs[gossipKeyOut] = nil
	} else if slices.Contains(parts, partGossip) {
		if outs[gossipKeyOut], err = gossipKey(); err != nil {
			return nil, err
		}
	}
	ca, brought := object(news, "ca"), object(news, "brought_ca")
	switch {
	case ca == nil && brought == nil:
		outs[caCertOut], outs[caKeyOut], outs[caNotAfterOut] = nil, nil, nil
	case slices.Contains(parts, partCA):
		var pair keyPair
		if brought != nil {
			pair = keyPair{certPEM: str(brought, "cert_pem"), keyPEM: str(brought, "key_pem")}
		} else {
			days, err := number(ca, "validity_days")
			if err != nil {
				return nil, fmt.Errorf("ca: %w", err)
			}
			if pair, err = certificateAuthority(str(ca, "common_name"), days, now); err != nil {
				return nil, err
			}
		}
		notAfter, err := pair.notAfter()
		if err != nil {
			return nil, fmt.Errorf("the CA certificate: %w", err)
		}
		outs[caCertOut], outs[caKeyOut], outs[caNotAfterOut] = pair.certPEM, pair.keyPEM, notAfter
	}
	request := object(news, "server_cert")
	switch {
	case request == nil:
		outs[serverCertOut], outs[serverKeyOut], outs[serverNotAfterOut] = nil, nil, nil
	case slices.Contains(parts, partServerCert):
		days, err := number(request, "validity_days")
		if err != nil {
			return nil, fmt.Errorf("server_cert: %w", err)
		}
		ca := keyPair{certPEM: str(outs, caCertOut), keyPEM: str(outs, caKeyOut)}
		pair, err := serverCertificate(ca, str(request, "common_name"), names(request, "dns_names"), names(request, "ip_addresses"), days, now)
		if err != nil {
			return nil, err
		}
		notAfter, err := pair.notAfter()
		if err != nil {
			return nil, err
		}
		outs[serverCertOut], outs[serverKeyOut], outs[serverNotAfterOut] = pair.certPEM, pair.keyPEM, notAfter
	}
	oldSecrets, oldAccessors := object(olds, tokenSecretsOut), object(olds, tokenAccessorsOut)
	secrets, accessors := map[string]any{}, map[string]any{}
	for _, name := range names(news, "tokens") {
		if secrets[name], err = keptOrNewID(oldSecrets, name); err != nil {
			return nil, err
		}
		if accessors[name], err = keptOrNewID(oldAccessors, name); err != nil {
			return nil, err
		}
	}
	outs[tokenSecretsOut], outs[tokenAccessorsOut] = secrets, accessors
	return outs, nil
}

func keptOrNewID(old props, name string) (string, error) {
	if id := str(old, name); id != "" {
		return id, nil
	}
	return tokenID()
}

// gossipKey: a Consul gossip encryption key, 32 random bytes in base64.
func gossipKey() (string, error) {
	raw := make([]byte, gossipKeyBytes)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(raw), nil
}

// tokenID: a Consul ACL AccessorID or SecretID, a random (version 4) UUID.
func tokenID() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}

// keyPair: a PEM certificate and its PEM (PKCS#8) private key.
type keyPair struct {
	certPEM, keyPEM string
}

func (p keyPair) certificate() (*x509.Certificate, error) {
	block, _ := pem.Decode([]byte(p.certPEM))
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}

func (p keyPair) notAfter() (string, error) {
	cert, err := p.certificate()
	if err != nil {
		return "", err
	}
	return cert.NotAfter.UTC().Format(notAfterTimeLayout), nil
}

func (p keyPair) signer() (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode([]byte(p.keyPEM))
	if block == nil {
		return nil, errors.New("the CA key is not PEM")
	}
	if key, err := x509.ParseECPrivateKey(block.Bytes); err == nil {
		return key, nil
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("the CA key: %w", err)
	}
	ecKey, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("the CA key must be an ECDSA key")
	}
	return ecKey, nil
}

func serialNumber() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 159))
}

func issue(template, parent *x509.Certificate, key *ecdsa.PrivateKey, signer *ecdsa.PrivateKey) (keyPair, error) {
	der, err := x509.CreateCertificate(rand.Reader, template, parent, &key.PublicKey, signer)
	if err != nil {
		return keyPair{}, err
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return keyPair{}, err
	}
	return keyPair{
		certPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		keyPEM:  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})),
	}, nil
}

// newCertificate: a fresh ECDSA P-256 key and a certificate template for it: its name, a random
// serial number and a validity of `validityDays` from `now` (backdated a little for clock skew).
func newCertificate(commonName string, validityDays int, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, nil, err
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-notBeforeBackdate),
		NotAfter:              now.AddDate(0, 0, validityDays),
		BasicConstraintsValid: true,
	}, key, nil
}

// certificateAuthority: a self-signed ECDSA P-256 CA that may sign end-entity certificates only.
func certificateAuthority(commonName string, validityDays int, now time.Time) (keyPair, error) {
	template, key, err := newCertificate(commonName, validityDays, now)
	if err != nil {
		return keyPair{}, err
	}
	template.IsCA = true
	template.MaxPathLen, template.MaxPathLenZero = 0, true
	template.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	return issue(template, template, key, key)
}

// serverCertificate: an ECDSA P-256 certificate for the servers, signed by `ca`, for server and
// client authentication under the given names and addresses.
func serverCertificate(ca keyPair, commonName string, dnsNames, ipAddresses []string, validityDays int, now time.Time) (keyPair, error) {
	caCert, err := ca.certificate()
	if err != nil {
		return keyPair{}, fmt.Errorf("the CA certificate: %w", err)
	}
	caKey, err := ca.signer()
	if err != nil {
		return keyPair{}, err
	}
	var ips []net.IP
	for _, text := range ipAddresses {
		ip := net.ParseIP(text)
		if ip == nil {
			return keyPair{}, fmt.Errorf("server_cert: %q is not an IP address", text)
		}
		ips = append(ips, ip)
	}
	template, key, err := newCertificate(commonName, validityDays, now)
	if err != nil {
		return keyPair{}, err
	}
	template.KeyUsage = x509.KeyUsageDigitalSignature
	template.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	template.DNSNames, template.IPAddresses = dnsNames, ips
	return issue(template, caCert, key, caKey)
}
