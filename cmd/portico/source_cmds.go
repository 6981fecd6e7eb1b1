package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"time"

	"github.com/portico-mail/portico/ops/daemon"
	"github.com/portico-mail/portico/routing/source/syncer"
)

func init() {
	register(&command{name: "source", summary: "directory sources mirrored into the routing table (admin API)", subs: []*command{
		{name: "list", summary: "list the directory sources with their last sync", setup: apiCmd(sourceList)},
		{name: "status", args: "[NAME]", summary: "show a source's sync state: last syncs, entries, changes, errors, refusals", setup: apiCmd(sourceStatus),
			about: "Answered by the raft leader, which syncs the sources; a node that cannot reach it shows the replicated state only."},
		{name: "sync", args: "NAME", summary: "sync a source in full now", setup: sourceSync,
			about: "The leader reads the source in full and writes the difference. --dry-run prints what would be added, changed and " +
				"removed, and writes nothing. A sync that would remove more than the source's max_delete_share of its rules is refused " +
				"(the safety valve); --force applies it."},
	}})
}

func sourceList(c *apiClient, _ []string) error {
	return show(c, "/v1/sources", func(a daemon.SourcesAnswer) error {
		printSourcesNote(a)
		tw := newTab()
		fmt.Fprintln(tw, "NAME\tTYPE\tRULES\tLAST SYNC\tLAST FULL\tON-MISS\tSTATE")
		for _, s := range a.Sources {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%v\t%s\n", s.Name, s.Type, s.Rules, sinceAt(s.LastSync), sinceAt(s.LastFull), s.OnMiss, sourceState(s))
		}
		return tw.Flush()
	})
}

func sourceStatus(c *apiClient, args []string) error {
	path := "/v1/sources"
	if len(args) > 0 {
		path += "/" + url.PathEscape(args[0])
	}
	return show(c, path, func(a daemon.SourcesAnswer) error {
		printSourcesNote(a)
		for i, s := range a.Sources {
			if i > 0 {
				fmt.Println()
			}
			printSourceStatus(os.Stdout, s)
		}
		return nil
	})
}

func printSourcesNote(a daemon.SourcesAnswer) {
	if a.Error != "" {
		fmt.Fprintf(os.Stderr, "note: %s\n", a.Error)
	}
}

// sourceState is one word for a source's condition.
func sourceState(s syncer.Status) string {
	switch {
	case s.Refused != "":
		return "refused"
	case s.LastError != "":
		return "failing"
	case s.LastSync == nil:
		return "never synced"
	}
	return "ok"
}

func sinceAt(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return time.Since(*t).Round(time.Second).String() + " ago"
}

func printSourceStatus(w io.Writer, s syncer.Status) {
	fmt.Fprintf(w, "%s (%s): %s\n", s.Name, s.Type, sourceState(s))
	fmt.Fprintf(w, "  rules in the table:  %d (tag %s)\n", s.Rules, s.Tag)
	fmt.Fprintf(w, "  intervals:           incremental %s, full %s\n", time.Duration(s.Interval*float64(time.Second)), time.Duration(s.FullInterval*float64(time.Second)))
	fmt.Fprintf(w, "  on-miss lookup:      %v\n", s.OnMiss)
	fmt.Fprintf(w, "  last sync:           %s (replicated)\n", sinceAt(s.LastSync))
	fmt.Fprintf(w, "  last full sync:      %s, %d entries\n", sinceAt(s.LastFull), s.Entries)
	if s.Watermark != "" {
		fmt.Fprintf(w, "  watermark:           %s\n", s.Watermark)
	}
	if s.Node != "" {
		fmt.Fprintf(w, "  synced by:           %s (%d syncs, %d errors, %d refused since it leads)\n", s.Node, s.Syncs, s.Errors, s.Refusals)
		fmt.Fprintf(w, "  last attempt:        %s\n", sinceAt(s.LastAttempt))
	}
	if r := s.Last; r != nil {
		fmt.Fprintf(w, "  last result:         %s in %s: %s\n", r.Kind, time.Duration(r.Duration*float64(time.Second)).Round(time.Millisecond), resultLine(*r))
	}
	if s.LastError != "" {
		fmt.Fprintf(w, "  error:               %s\n", s.LastError)
	}
	if s.Refused != "" {
		fmt.Fprintf(w, "  refused:             %s; `portico source sync %s --dry-run` shows it, --force applies it\n", s.Refused, s.Name)
	}
}

func resultLine(r syncer.Result) string {
	s := fmt.Sprintf("%d entries, %d added, %d changed, %d removed, %d unchanged", r.Entries, r.Added, r.Changed, r.Removed, r.Unchanged)
	if r.Shadowed > 0 {
		s += fmt.Sprintf(", %d shadowed (another writer's rule)", r.Shadowed)
	}
	if r.Invalid > 0 {
		s += fmt.Sprintf(", %d invalid", r.Invalid)
	}
	if len(r.NewBackends) > 0 {
		s += fmt.Sprintf(", %d new backends", len(r.NewBackends))
	}
	if r.Paused > 0 {
		s += fmt.Sprintf("; %d commands, paused %s between them", r.Commands, time.Duration(r.Paused*float64(time.Second)).Round(time.Millisecond))
	}
	return s
}

func sourceSync(fs *flag.FlagSet) func([]string) error {
	client := clientFlags(fs)
	dry := fs.Bool("dry-run", false, "print the difference, write nothing")
	force := fs.Bool("force", false, "apply the sync even if it removes more than max_delete_share of the source's rules")
	return func(args []string) error {
		c, err := client()
		if err != nil {
			return err
		}
		var a daemon.SourceSyncAnswer
		raw, err := c.do("POST", "/v1/sources/"+url.PathEscape(args[0])+"/sync", daemon.SourceSyncRequest{DryRun: *dry, Force: *force}, &a)
		var ae *apiError
		if errors.As(err, &ae) && (ae.Status == 409 || ae.Status == 502) {
			_ = json.Unmarshal(raw, &a) // the result rides along with the refusal or failure
		} else if err != nil || c.json {
			printJSONIf(c, raw, err)
			return err
		}
		if c.json {
			printJSON(raw)
			return err
		}
		if a.Running {
			fmt.Println(a.Error)
			return nil
		}
		if r := a.Result; r != nil {
			printSyncResult(os.Stdout, *r)
		}
		return err
	}
}

func printSyncResult(w io.Writer, r syncer.Result) {
	verb := "synced"
	if r.DryRun {
		verb = "would sync"
	}
	fmt.Fprintf(w, "%s %s (%s): %s\n", verb, r.Source, r.Kind, resultLine(r))
	for _, u := range r.AddedList {
		fmt.Fprintf(w, "+ %s: %s\n", u.User, targetString(u.Target))
	}
	for _, ch := range r.ChangedList {
		fmt.Fprintf(w, "~ %s: %s -> %s\n", ch.User, targetString(ch.From), targetString(ch.To))
	}
	for _, u := range r.RemovedList {
		fmt.Fprintf(w, "- %s: %s\n", u.User, targetString(u.Target))
	}
	for _, s := range r.InvalidList {
		fmt.Fprintf(w, "! %s\n", s)
	}
	if len(r.NewBackends) > 0 {
		fmt.Fprintf(w, "new backends: %v\n", r.NewBackends)
	}
	if r.Refused != "" {
		fmt.Fprintf(w, "refused by the safety valve: %s (--force applies it)\n", r.Refused)
	}
}
