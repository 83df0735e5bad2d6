package registry

import "strings"

// Actor is who asks for a change: the registry operator, a tenant (by one of its
// tokens or its client certificate), or a device (by its enrollment code or its
// current certificate). The audit trail records ID.
type Actor struct {
	ID       string // "operator", "token:<id>", "cert:<subject>", "device:<name>", "cli:<user>"
	Tenant   string // the tenant an actor acts for; "" for the operator and devices
	Operator bool   // sees and changes everything, tenants included
	// ByCertificate: a client certificate authenticated the actor, a credential a
	// browser sends on its own (a bearer token it never does).
	ByCertificate bool
}

// OperatorActor is the registry operator known by name (the admin token, the CLI on
// etcd directly).
func OperatorActor(id string) Actor { return Actor{ID: id, Operator: true} }

// deviceActor is a device acting for itself, authorised by a code or its certificate.
func deviceActor(device string) Actor { return Actor{ID: devicePrefix + device} }

const devicePrefix = "device:"

// isDevice reports whether the actor is a device acting for itself.
func (a Actor) isDevice() bool {
	return !a.Operator && a.Tenant == "" && strings.HasPrefix(a.ID, devicePrefix)
}

// Sees reports whether the actor may see a record of tenant.
func (a Actor) Sees(tenant string) bool { return a.Operator || a.Tenant != "" && a.Tenant == tenant }
