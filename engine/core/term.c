/*
** term.c: drawing on the terminal across the layers, which do not call
** each other (io/ and cli/; the core and io/). The REPL (cli/repl.c)
** registers how to hide its prompt and the partly typed line and how to
** draw them again, for what draws from C (io/progress.c); io/progress.c
** registers the progress line that the core's groups draw. Both are the
** process's: one REPL per process, one progress implementation.
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

static const struct braid_progress_ops *progress_ops;
static int progress_default;

void braid__progress_ops (const struct braid_progress_ops *ops) {
  progress_ops = ops;
}

const struct braid_progress_ops *braid__progress (void) {
  return progress_ops;
}

void braid__progress_default (int on) {
  progress_default = on;
}

int braid__progress_by_default (void) {
  return progress_default;
}
