/*
** term.c: who may write on the terminal while the REPL shows its prompt.
** The REPL (cli/repl.c) registers how to hide its prompt and the partly
** typed line, and how to draw them again; what draws on the terminal
** from C (io/progress.c) asks through here, since io/ and cli/ do not call
** each other. One REPL per process, so the guard is the process's.
*/
#include "core.h"

static const struct braid_term_guard *term_guard;

void braid__term_guard (const struct braid_term_guard *g) {
  term_guard = g;
}

int braid__term_hide (void) {
  return term_guard ? term_guard->hide() : 0;
}

void braid__term_show (int at_line_start) {
  if (term_guard) term_guard->show(at_line_start);
}
