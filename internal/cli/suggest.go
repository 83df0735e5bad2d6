// Package cli holds what the commands share on their command line: -h text in one form,
// and the known word nearest to a mistyped one for "unknown command" messages.
package cli

import "strings"

// Nearest is the word of known closest to word by edit distance (Levenshtein), or ""
// when none is close enough to be what was meant: at most 2 edits, and at most half
// of word's letters (so that "x" suggests nothing). Ties go to the earlier word.
func Nearest(word string, known []string) string {
	word = strings.ToLower(word)
	best, bestD := "", 3
	for _, k := range known {
		if d := distance(word, strings.ToLower(k)); d < bestD && 2*d <= len([]rune(word)) {
			best, bestD = k, d
		}
	}
	return best
}

// Hint is ` (did you mean "x"?)` for Nearest's answer, or "" when it has none.
func Hint(word string, known []string) string {
	if n := Nearest(word, known); n != "" {
		return ` (did you mean "` + n + `"?)`
	}
	return ""
}

// distance is the Levenshtein distance between a and b (insertions, deletions and
// substitutions of one rune each), over two rows.
func distance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev, cur := make([]int, len(rb)+1), make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			sub := prev[j-1]
			if ra[i-1] != rb[j-1] {
				sub++
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, sub)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}
