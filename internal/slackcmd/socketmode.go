package slackcmd

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/slack-go/slack"
	"github.com/slack-go/slack/socketmode"
)

// Reconnect backoff of RunSocketMode when Slack refuses a connection (the
// socketmode client already retries network errors on its own).
const (
	socketMinBackoff = time.Second
	socketMaxBackoff = 2 * time.Minute
)

// RunSocketMode answers slash commands over Slack Socket Mode, for workers
// without a public URL: it connects with the app-level token (xapp-…),
// acknowledges each command with the same Reply the HTTP endpoint sends,
// and reconnects until ctx is done. apiURL is the Slack Web API base ("" for
// Slack's own). It returns nil once ctx is done and in-flight commands are
// answered, and an error only for an unusable configuration.
func RunSocketMode(ctx context.Context, appToken, botToken, apiURL string, h *Handler, logger *slog.Logger) error {
	return runSocketMode(ctx, socketConfig{
		appToken:   appToken,
		botToken:   botToken,
		apiURL:     apiURL,
		handler:    h,
		log:        logger,
		minBackoff: socketMinBackoff,
		maxBackoff: socketMaxBackoff,
	})
}

// socketConfig holds RunSocketMode's inputs plus the backoff tests shorten.
type socketConfig struct {
	appToken, botToken, apiURL string
	handler                    *Handler
	log                        *slog.Logger
	minBackoff, maxBackoff     time.Duration
}

func runSocketMode(ctx context.Context, cfg socketConfig) error {
	if !strings.HasPrefix(cfg.appToken, "xapp-") {
		return errors.New("slackcmd: SLACK_APP_TOKEN must be an app-level token (xapp-…)")
	}
	if cfg.handler == nil {
		return errors.New("slackcmd: Socket Mode needs a Handler")
	}
	log := cfg.log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With(slog.String("component", "socketmode"))
	opts := []slack.Option{slack.OptionAppLevelToken(cfg.appToken)}
	if cfg.apiURL != "" {
		apiURL := cfg.apiURL
		if !strings.HasSuffix(apiURL, "/") {
			apiURL += "/"
		}
		opts = append(opts, slack.OptionAPIURL(apiURL))
	}
	client := socketmode.New(slack.New(cfg.botToken, opts...), socketmode.OptionLog(debugLogger{log}))

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := &socketRunner{client: client, handler: cfg.handler, log: log}
	var events sync.WaitGroup
	events.Go(func() { r.receive(ctx) })

	backoff := cfg.minBackoff
	for {
		started := time.Now()
		err := client.RunContext(ctx)
		if ctx.Err() != nil {
			break
		}
		if time.Since(started) > cfg.maxBackoff {
			backoff = cfg.minBackoff
		}
		msg := "socket mode connection failed; retrying"
		if err != nil {
			log.Warn(msg, slog.String("error", err.Error()), slog.String("retry_in", backoff.String()))
		} else {
			log.Warn(msg, slog.String("retry_in", backoff.String()))
		}
		timer := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
		case <-timer.C:
		}
		timer.Stop()
		backoff = min(backoff*2, cfg.maxBackoff)
		if ctx.Err() != nil {
			break
		}
	}
	cancel()
	events.Wait()
	r.commands.Wait()
	return nil
}

// socketRunner turns socketmode events into Handler calls.
type socketRunner struct {
	client  *socketmode.Client
	handler *Handler
	log     *slog.Logger
	// commands counts slash commands being answered.
	commands sync.WaitGroup
}

// receive reads client events until ctx is done.
func (r *socketRunner) receive(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case evt, ok := <-r.client.Events:
			if !ok {
				return
			}
			r.dispatch(ctx, evt)
		}
	}
}

func (r *socketRunner) dispatch(ctx context.Context, evt socketmode.Event) {
	switch evt.Type {
	case socketmode.EventTypeConnecting:
		r.log.Debug("socket mode connecting")
	case socketmode.EventTypeConnected:
		r.log.Info("socket mode connected")
	case socketmode.EventTypeConnectionError:
		attrs := []any{}
		if e, ok := evt.Data.(*slack.ConnectionErrorEvent); ok && e.ErrorObj != nil {
			attrs = append(attrs, slog.String("error", e.ErrorObj.Error()))
		}
		r.log.Warn("socket mode connection error", attrs...)
	case socketmode.EventTypeInvalidAuth:
		r.log.Error("Slack refused the app-level token (SLACK_APP_TOKEN)")
	case socketmode.EventTypeDisconnect:
		r.log.Info("socket mode disconnect requested by Slack")
	case socketmode.EventTypeSlashCommand:
		cmd, ok := evt.Data.(slack.SlashCommand)
		if !ok || evt.Request == nil {
			r.log.Warn("socket mode slash command without payload")
			return
		}
		envelope := evt.Request.EnvelopeID
		r.commands.Go(func() { r.answer(ctx, envelope, cmd) })
	case socketmode.EventTypeEventsAPI, socketmode.EventTypeInteractive:
		// Nothing here is subscribed to; acknowledging stops Slack's retries.
		if evt.Request != nil {
			if err := r.client.AckCtx(ctx, evt.Request.EnvelopeID, nil); err != nil {
				r.log.Debug("acknowledging socket mode event failed", slog.String("error", err.Error()))
			}
		}
	}
}

// answer runs a slash command and acknowledges it with the reply. A reply
// too large for a Socket Mode acknowledgement goes to the response_url.
func (r *socketRunner) answer(ctx context.Context, envelope string, cmd slack.SlashCommand) {
	reply := r.handler.Execute(ctx, cmd)
	err := r.client.AckCtx(ctx, envelope, reply)
	if err == nil || ctx.Err() != nil {
		return
	}
	r.log.Warn("acknowledging slash command failed; posting the answer instead", slog.String("error", err.Error()))
	short := textReply("The answer is on its way…")
	if err := r.client.AckCtx(ctx, envelope, short); err != nil {
		r.log.Warn("acknowledging slash command failed", slog.String("error", err.Error()))
	}
	r.handler.pending.Go(func() {
		deliverCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.handler.checkTimeout)
		defer cancel()
		r.handler.deliver(deliverCtx, r.log, cmd.ResponseURL, reply)
	})
}

// debugLogger sends the socketmode client's own log lines to slog at
// debug level instead of the standard logger.
type debugLogger struct{ log *slog.Logger }

// Output implements the socketmode logger interface.
func (d debugLogger) Output(_ int, s string) error {
	d.log.Debug(strings.TrimSpace(s))
	return nil
}
