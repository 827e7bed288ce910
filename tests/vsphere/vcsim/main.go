// A vCenter simulator for deskbroker's tests, built from govmomi's simulator package
// (Debian's golang-github-vmware-govmomi-dev) by `make setup`: one datacenter, one cluster
// of -hosts hosts, -datastores datastores, -vms powered-on VMs and -templates templates
// (the first with a snapshot "base", so linked clones can be made from it).
// With -trace FILE it writes the SOAP traffic to FILE.
// It prints one JSON line {"url": ..., "ca_file": ...} once it listens, and runs until
// its standard input closes or it is signalled.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/url"
	"os"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address:port to listen on")
	hosts := flag.Int("hosts", 2, "hosts in the cluster")
	datastores := flag.Int("datastores", 2, "datastores")
	vms := flag.Int("vms", 2, "powered-on virtual machines")
	templates := flag.Int("templates", 2, "templates (the first has a snapshot)")
	trace := flag.String("trace", "", "write the SOAP requests and answers to this file")
	flag.Parse()
	if *trace != "" {
		// The tests read what the broker asked when the simulator does not act on it
		// (a linked clone's disk backing, a revert).
		out, err := os.Create(*trace)
		if err != nil {
			log.Fatal(err)
		}
		simulator.Trace, simulator.TraceFile = true, out
	}

	model := simulator.VPX()
	model.Host = 0
	model.ClusterHost = *hosts
	model.Datastore = *datastores
	model.Machine = *vms + *templates
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	defer model.Remove()
	cert, caPEM := selfSigned()
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	model.Service.Listen = &url.URL{Host: *listen}
	server := model.Service.NewServer()
	defer server.Close()

	ctx := context.Background()
	client, err := govmomi.NewClient(ctx, server.URL, true)
	if err != nil {
		log.Fatal(err)
	}
	machines, err := find.NewFinder(client.Client, true).VirtualMachineList(ctx, "/DC0/vm/*")
	if err != nil {
		log.Fatal(err)
	}
	// The last -templates machines become templates: off, renamed, the first snapshotted.
	for i := 0; i < *templates && i < len(machines); i++ {
		vm := machines[len(machines)-*templates+i]
		steps := []func() error{
			func() error { t, e := vm.PowerOff(ctx); return wait(ctx, t, e) },
			func() error { t, e := vm.Rename(ctx, fmt.Sprintf("template-%d", i)); return wait(ctx, t, e) },
			func() error {
				if i > 0 {
					return nil
				}
				t, e := vm.CreateSnapshot(ctx, "base", "for linked clones", false, false)
				return wait(ctx, t, e)
			},
			func() error { return vm.MarkAsTemplate(ctx) },
		}
		for _, step := range steps {
			if err := step(); err != nil {
				log.Fatal(err)
			}
		}
	}
	go tools(ctx, client)

	ca, err := os.CreateTemp("", "vcsim-ca-*.pem")
	if err != nil {
		log.Fatal(err)
	}
	defer os.Remove(ca.Name())
	_, _ = ca.Write(caPEM)
	_ = ca.Close()
	caFile := ca.Name()
	server.URL.User = nil
	line, _ := json.Marshal(map[string]string{"url": server.URL.String(), "ca_file": caFile})
	fmt.Println(string(line))
	_, _ = io.Copy(io.Discard, os.Stdin)
}

// tools plays each guest's VMware Tools: a powered-on VM with no address reports one
// (127.0.1.N, N counting up), as a real guest's Tools would once its network is up.
func tools(ctx context.Context, client *govmomi.Client) {
	m := view.NewManager(client.Client)
	v, err := m.CreateContainerView(ctx, client.ServiceContent.RootFolder, []string{"VirtualMachine"}, true)
	if err != nil {
		log.Fatal(err)
	}
	next := 1
	for range time.Tick(200 * time.Millisecond) {
		var vms []mo.VirtualMachine
		if err := v.Retrieve(ctx, []string{"VirtualMachine"}, []string{"runtime.powerState", "guest.ipAddress"}, &vms); err != nil {
			continue
		}
		for _, vm := range vms {
			if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn || (vm.Guest != nil && vm.Guest.IpAddress != "") {
				continue
			}
			ip := fmt.Sprintf("127.0.1.%d", next%250+1)
			next++
			spec := types.VirtualMachineConfigSpec{ExtraConfig: []types.BaseOptionValue{
				&types.OptionValue{Key: "SET.guest.ipAddress", Value: ip},
			}}
			if task, err := object.NewVirtualMachine(client.Client, vm.Self).Reconfigure(ctx, spec); err == nil {
				_ = task.Wait(ctx)
			}
		}
	}
}

// selfSigned makes a P-256 certificate for 127.0.0.1 that is its own CA: httptest's
// built-in one has a 1024-bit key, which OpenSSL's default security level refuses.
func selfSigned() (tls.Certificate, []byte) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	template := x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "vcsim"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, &template, &template, &key.PublicKey, key)
	if err != nil {
		log.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

type task interface{ Wait(context.Context) error }

func wait[T task](ctx context.Context, t T, err error) error {
	if err != nil {
		return err
	}
	return t.Wait(ctx)
}
