package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"strings"

	"github.com/taskflow-watch/taskflow-watch/internal/config"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific"
)

// webhooksCmd implements `worker webhooks subscribe`: it creates the
// workspace's webhook secret and subscribes the target URL to both study
// events, confirming each subscription as Prolific requires. The secret is
// written to a file readable only by its owner and never printed.
func webhooksCmd(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	const use = "webhooks subscribe --target-url https://…/webhooks/prolific --workspace-id ID --secret-file PATH"
	if len(args) == 0 || args[0] != "subscribe" {
		return fmt.Errorf("%w: %s", errUsage, use)
	}
	flags := flag.NewFlagSet("webhooks subscribe", flag.ContinueOnError)
	target := flags.String("target-url", "", "public URL of this worker's /webhooks/prolific")
	workspace := flags.String("workspace-id", "", "Prolific workspace whose studies send events")
	secretFile := flags.String("secret-file", "", "new file to write the signing secret to (mode 0600)")
	pos, err := parseFlags(flags, args[1:])
	if err != nil {
		return err
	}
	if len(pos) != 0 || *target == "" || *workspace == "" || *secretFile == "" {
		return fmt.Errorf("%w: %s", errUsage, use)
	}
	if u, err := url.Parse(*target); err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("%w: --target-url must be an absolute https URL that Prolific can reach", errUsage)
	}
	cfg, err := config.Load(getenv, config.Need{Prolific: true})
	if err != nil {
		return fmt.Errorf("configuration:\n%w", err)
	}
	client, err := prolific.New(prolific.Config{BaseURL: cfg.ProlificAPIURL, Token: cfg.ProlificToken})
	if err != nil {
		return err
	}
	// Create the file first, so a path problem stops us before Prolific's
	// secret is replaced.
	f, err := os.OpenFile(*secretFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("--secret-file %s already exists; choose a new path", *secretFile)
	}
	if err != nil {
		return fmt.Errorf("creating --secret-file: %w", err)
	}
	secret, err := client.CreateWebhookSecret(ctx, *workspace)
	if err == nil {
		_, err = io.WriteString(f, secret+"\n")
	}
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		_ = os.Remove(*secretFile)
		return fmt.Errorf("creating the webhook secret: %w", err)
	}
	fmt.Fprintf(stdout, "webhook secret written to %s: set PROLIFIC_WEBHOOK_SECRET to its contents\n", *secretFile)
	for _, event := range []string{prolific.EventStudyProgressChange, prolific.EventStudyStatusChange} {
		sub, err := client.Subscribe(ctx, prolific.Subscription{EventType: event, TargetURL: *target, WorkspaceID: *workspace})
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "subscribed %s to %s (subscription %s)\n", strings.TrimSpace(*target), event, sub.ID)
	}
	return nil
}
