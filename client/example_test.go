package client_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"time"

	"amqphub/client"
	"amqphub/internal/server"
)

// exampleHub starts an in-process hub with a device "thermostat" and
// returns the connection strings and options that reach it. In real use
// these come from your hub: HostName=...;DeviceId=...;SharedAccessKey=...
// and HostName=...;SharedAccessKeyName=...;SharedAccessKey=....
func exampleHub() (hub *server.Server, deviceCS, serviceCS string, dopts *client.DeviceOptions, sopts *client.ServiceOptions) {
	s, err := server.Start(server.Options{
		InMemory: true, AMQPAddr: "127.0.0.1:0", AMQPSAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0",
		Devices: []server.DeviceConfig{{ID: "thermostat"}},
		Logger:  slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	warmUpHTTPS(s)
	ctx := context.Background()
	deviceCS, err = s.DeviceConnectionString(ctx, "thermostat")
	if err != nil {
		log.Fatal(err)
	}
	cs, err := s.ConnectionStrings(ctx)
	if err != nil {
		log.Fatal(err)
	}
	// amqphub runs on random ports with its own CA here; against Azure IoT
	// Hub leave Address, RESTURL and TLSConfig unset.
	dopts = &client.DeviceOptions{TLSConfig: s.ClientTLS, Address: s.AMQPSAddr}
	sopts = &client.ServiceOptions{TLSConfig: s.ClientTLS, Address: s.AMQPSAddr, RESTURL: "https://" + s.HTTPSAddr}
	return s, deviceCS, cs.Service, dopts, sopts
}

// A device sends telemetry; the service reads it from every partition.
func ExampleDeviceClient_SendEvent() {
	hub, deviceCS, serviceCS, dopts, sopts := exampleHub()
	defer hub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	device, err := client.NewDeviceClient(deviceCS, dopts)
	if err != nil {
		log.Fatal(err)
	}
	defer device.Close()
	err = device.SendEvent(ctx, &client.Message{
		Body:        []byte(`{"temperature":21.5}`),
		ContentType: "application/json",
		Properties:  map[string]string{"alert": "none"},
	})
	if err != nil {
		log.Fatal(err)
	}

	service, err := client.NewServiceClient(serviceCS, sopts)
	if err != nil {
		log.Fatal(err)
	}
	defer service.Close()
	reader, err := service.NewEventReader(ctx, &client.EventReaderOptions{Start: client.StartEarliest()})
	if err != nil {
		log.Fatal(err)
	}
	defer reader.Close()
	e, err := reader.Receive(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s sent %s (%s, alert=%s), sequence number %d\n", e.DeviceID, e.Body, e.ContentType, e.Properties["alert"], e.SequenceNumber)
	// Output: thermostat sent {"temperature":21.5} (application/json, alert=none), sequence number 0
}

// A device answers a direct method that the service invokes.
func ExampleDeviceClient_HandleMethod() {
	hub, deviceCS, serviceCS, dopts, sopts := exampleHub()
	defer hub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	device, err := client.NewDeviceClient(deviceCS, dopts)
	if err != nil {
		log.Fatal(err)
	}
	defer device.Close()
	err = device.HandleMethod(ctx, "setpoint", func(ctx context.Context, req client.MethodRequest) (client.MethodResponse, error) {
		return client.MethodResponse{Status: 200, Payload: map[string]any{"accepted": string(req.Payload)}}, nil
	})
	if err != nil {
		log.Fatal(err)
	}

	service, err := client.NewServiceClient(serviceCS, sopts)
	if err != nil {
		log.Fatal(err)
	}
	defer service.Close()
	res, err := service.InvokeMethod(ctx, "thermostat", "", client.MethodCall{Name: "setpoint", Payload: 22})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Status, string(res.Payload))
	// Output: 200 {"accepted":"22"}
}

// The service sends a cloud-to-device message asking for full feedback;
// the device completes it and the service receives the feedback record.
func ExampleServiceClient_SendC2D() {
	hub, deviceCS, serviceCS, dopts, sopts := exampleHub()
	defer hub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	service, err := client.NewServiceClient(serviceCS, sopts)
	if err != nil {
		log.Fatal(err)
	}
	defer service.Close()
	msg := &client.Message{Body: []byte("reboot"), MessageID: "cmd-1"}
	if err := service.SendC2D(ctx, "thermostat", msg, &client.C2DOptions{Ack: client.AckFull}); err != nil {
		log.Fatal(err)
	}

	device, err := client.NewDeviceClient(deviceCS, dopts)
	if err != nil {
		log.Fatal(err)
	}
	defer device.Close()
	m, err := device.ReceiveC2D(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("device got %q (ack %s)\n", m.Body, m.Ack)
	if err := m.Complete(ctx); err != nil {
		log.Fatal(err)
	}

	batch, err := service.ReceiveFeedback(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range batch.Records {
		fmt.Printf("feedback: %s %s %s\n", r.DeviceID, r.OriginalMessageID, r.StatusCode)
	}
	if err := batch.Complete(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// device got "reboot" (ack full)
	// feedback: thermostat cmd-1 Success
}

// A device reports properties and follows changes of its desired
// properties.
func ExampleDeviceClient_OnDesiredUpdate() {
	hub, deviceCS, serviceCS, dopts, sopts := exampleHub()
	defer hub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	device, err := client.NewDeviceClient(deviceCS, dopts)
	if err != nil {
		log.Fatal(err)
	}
	defer device.Close()
	updates := make(chan client.DesiredUpdate, 1)
	if err := device.OnDesiredUpdate(ctx, func(u client.DesiredUpdate) { updates <- u }); err != nil {
		log.Fatal(err)
	}
	version, err := device.UpdateReported(ctx, map[string]any{"firmware": "1.2.0"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("reported version", version)

	service, err := client.NewServiceClient(serviceCS, sopts)
	if err != nil {
		log.Fatal(err)
	}
	defer service.Close()
	if _, err := service.UpdateTwin(ctx, "thermostat", "", client.TwinPatch{Desired: map[string]any{"setpoint": 20}}, ""); err != nil {
		log.Fatal(err)
	}
	u := <-updates
	fmt.Println("desired setpoint", u.Patch["setpoint"], "version", u.Version)
	// Output:
	// reported version 2
	// desired setpoint 20 version 2
}

// warmUpHTTPS makes one HTTPS request before any AMQPS connection, so that
// the hub's HTTPS server has set up the TLS configuration it shares with
// AMQPS before the race detector sees a handshake use it (a hub issue).
func warmUpHTTPS(s *server.Server) {
	tr := &http.Transport{TLSClientConfig: s.ClientTLS}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + s.HTTPSAddr + "/")
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
}
