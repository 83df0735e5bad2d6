package httpapi

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed console
var consoleFiles embed.FS

// consolePolicy lets the console's page run only its own script and style, talk only
// to its own origin, and be framed by nobody: a hostile value that reached the page
// as markup could run nothing (the page never inserts markup: it sets text).
const consolePolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'none'; frame-ancestors 'none'; base-uri 'none'"

// ConsoleHandler serves the web console under /console/: a page, a script and a
// style sheet, all embedded (no external assets), which speak the admin API with the
// bearer token the user signs in with. The token stays in the tab's sessionStorage
// and goes out only in the Authorization header, never in a cookie: another site
// cannot make the browser send it (no CSRF), and the API refuses bodies that are not
// JSON, which no cross-site form can send.
func ConsoleHandler() http.Handler {
	sub, _ := fs.Sub(consoleFiles, "console")
	files := http.StripPrefix("/console/", http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", consolePolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}
