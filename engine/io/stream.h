/*
** stream.h: braid's one buffered stream over a uv_stream_t (stream.c),
** under TCP streams (tcp.c) and a child's pipes (process.c, exec.c):
** reading into one buffer (read([n]), read("a"), read_line with one line
** limit), writing with the uv_try_write fast path and back-pressure,
** shutdown and close, with one set of semantics and messages.
**
** The owner embeds a struct braid_stream in its own struct, initialises
** the handle (uv_tcp_init, uv_pipe_init) and then the stream; the hooks
** tell it when the stream starts closing, when the handle has closed (free
** what embeds the stream, or not yet) and when reading has ended. The
** stream's memory must stay valid while a Lua object that names it is
** alive (its methods' continuations find it through their op data), and
** until the handle's close callback: the owner frees it when both are
** gone.
*/
#ifndef BRAID_STREAM_H
#define BRAID_STREAM_H

#include "braid.h"
#include "core/prim.h"

/* read_line's default limit, in bytes, without the "\n" or "\r\n". */
#define BRAID_MAX_LINE (1 << 20)

/* What a read waits for: up to n bytes (at least one), a line, or
** everything until the end. */
enum { BRAID_READ_SOME, BRAID_READ_LINE, BRAID_READ_ALL };

struct braid_stream;

/* One static table per kind of owner. None of them may run Lua. */
struct braid_stream_hooks {
  /* The stream starts closing (braid__stream_close, whoever called it: the
  ** owner, or a cancelled write): let go of what still refers to it, such
  ** as a scope's resource. May be NULL. */
  void (*closing)(struct braid_stream *s);
  /* The handle's close callback: every write and shutdown callback has
  ** run. Free what embeds s (braid__stream_free first), or not yet. */
  void (*closed)(struct braid_stream *s);
  /* Reading has ended (s->rerr: UV_EOF or an error) and a waiting reader
  ** has been woken. May be NULL. */
  void (*ended)(struct braid_stream *s);
};

struct braid_stream {
  union {                       /* the handle; h.handle.data is the owner's */
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h;
  const struct braid_stream_hooks *hooks;
  braid_engine_t *E;
  const char *name;             /* in messages: "the stream", "stdout" */
  const char *limit_opt;        /* who takes max_line: "braid.process" */
  size_t max_line;              /* the owner's to set; BRAID_MAX_LINE */
  size_t max_buf;               /* the owner's to set: the most the buffer
                                   may hold (exec's max_output); going
                                   over ends reading (rerr UV_ENOBUFS,
                                   over) and raises kind "limit";
                                   BRAID_NO_LIMIT */
  const char *max_buf_opt;      /* the option that sets it: "max_output" */
  size_t first_buf;             /* the owner's to set: the first buffer's
                                   size (64 KiB; a child's pipes: less) */
  struct braid_charge charge;   /* buf's bytes, against the memory limit */
  braid_op_t *rop;              /* the waiting reader's op, until resumed */
  braid_op_t *reader;           /* the reader's op, until its continuation */
  struct braid_list writes;     /* requests holding their Lua strings */
  char *buf;
  size_t cap, off, len;         /* buffered bytes: buf[off, off + len) */
  size_t scan;                  /* bytes after off known to hold no "\n" */
  int rerr;                     /* once reading ended: UV_EOF or an error */
  unsigned char live;           /* from init until braid__stream_close */
  unsigned char reading, drain, mode, over;
  unsigned char shut;           /* shutdown was asked for */
  unsigned char collected;      /* after a refused buffer: 1 the reader
                                   is to collect, 2 it did; 0 again once
                                   the buffer grows */
};

/* Makes s, whose handle the owner has just initialised, a stream named
** `name` in messages. The handle is unreferenced: only a task waiting on
** it, or a drain, keeps the loop alive. */
void braid__stream_init(struct braid_stream *s, braid_engine_t *E,
                        const struct braid_stream_hooks *hooks,
                        const char *name);

/* Closes the stream once (harmless afterwards); runs no Lua. Unread data
** goes with it unless reading had ended (then reads still get the rest,
** then the end); the strings of pending writes are let go (libuv reads
** them no more); a waiting reader is woken and finds it closed; pending
** writes and a shutdown end with UV_ECANCELED. */
void braid__stream_close(struct braid_stream *s);

/* Frees the buffer: from the owner, once the handle has closed. */
void braid__stream_free(struct braid_stream *s);

/* Starts reading into the buffer (harmless when reading or ended); it
** pauses once 64 KiB are buffered and nobody waits, unless drained.
** Returns 0, or a libuv error, which also ends reading. The buffer is
** charged against the engine's memory limit (braid__charge_set): growth
** refused ends reading with UV_ENOMEM (kind "memory" for the reader). */
int braid__stream_start(struct braid_stream *s);

/* on: read everything into memory, as long as it comes, and keep the loop
** alive meanwhile (exec's capture, a proc:wait()); off: back to pausing. */
void braid__stream_drain(struct braid_stream *s, int on);

/* The Lua methods' bodies; the object is at 1 and fname names the method
** as the script wrote it ("stream:read", "proc:read_line"): errors and
** waits are named after it. Each checks for a task, raises kind "closed"
** on a closed stream, and suspends through braid_suspendk.
**
** read: arg 2 is n (a positive integer: up to n bytes, waiting for at
** least one, nil at the end), "a" (everything until the end, "" when
** nothing is left) or absent (`dflt`: BRAID_READ_SOME with no bound, or
** BRAID_READ_ALL). read_line: the next line without its "\n" or "\r\n";
** at the end the unterminated rest, then nil; a line longer than
** s->max_line raises kind "limit" and stays buffered. A read
** error (ECONNRESET) is raised, kind "io", once the buffer is drained;
** only one task reads at a time (another one gets a usage error). write:
** the string at 2, returns the object once libuv has written it all.
** shutdown: returns the object once libuv has sent the end; again, at
** once. */
int braid__stream_read(lua_State *L, struct braid_stream *s, int dflt,
                       const char *fname);
int braid__stream_read_line(lua_State *L, struct braid_stream *s,
                            const char *fname);
int braid__stream_write(lua_State *L, struct braid_stream *s,
                        const char *fname);
int braid__stream_shutdown(lua_State *L, struct braid_stream *s,
                           const char *fname);

/* uv_write of the len bytes at data, from as many buffers as it takes:
** uv_buf_init takes an unsigned length (a plain cast would cut a string
** of 4 GiB or more and write the rest silently never), so the bytes go in
** buffers of at most braid__write_chunk bytes (1 GiB; between 1 and
** UINT_MAX; tests make it small). libuv copies the buffer array, which
** lives for the call only. Returns 0 or a libuv code (UV_ENOMEM when the
** array cannot be made); the bytes must stay valid until cb. */
int braid__stream_uv_write(uv_write_t *req, uv_stream_t *h, const char *data,
                           size_t len, uv_write_cb cb);
extern size_t braid__write_chunk;

/* Pushes an iterator over read_line for a generic for: `read_line` (the
** owner's method, object at 1) called on the object at 1. [-0, +1, m] */
int braid__stream_lines(lua_State *L, lua_CFunction read_line);

/* Pushes what a read in `mode` gets now without waiting, and returns 1;
** or returns 0 when it would have to wait. Raises as the reads do. */
int braid__stream_take(lua_State *L, struct braid_stream *s, int mode,
                       size_t n, const char *fname);

/* Writing to a socket or pipe whose reader has gone must fail with EPIPE,
** not kill the process: SIGPIPE gets a handler, unless the host already
** chose a disposition, which leaves such a write its EPIPE; only braid's
** own stdout losing its reader ends the run, or the process outside one,
** as SIGPIPE ends lua (braid__interrupt_pipe). Every opener of a library
** that writes to streams calls it; calling it again is harmless. */
void braid__stream_sigpipe(void);

#endif
