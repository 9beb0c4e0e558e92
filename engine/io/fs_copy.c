/*
** fs_copy.c: the private job under braid.fs.copy(from, to) (Lua,
** lua/braid.lua): fs._copy_new(from, to) -> job, fs._copy_run(job),
** fs._copy_wait(job) (private functions, not methods: lua/braid.lua keeps
** them and removes them from braid.fs).
**
** The copy is one job on libuv's thread pool that reads `from` and writes
** `to` in chunks of COPY_CHUNK bytes until read(2) says the end, checking
** `stop` before every read and every write. uv_fs_copyfile, one request
** that nobody can stop, kept copying after a cancel (and held up the
** exit), and copied st_size bytes, none of a /proc file's. The source
** must be a regular file; the target may be a regular file (truncated,
** given the source's permission bits) or a device, never a FIFO or
** socket. Both are checked with stat before they are opened: opening one
** end of a FIFO releases whoever waits at the other (a writer's data went
** into a pipe closed at once, a reader got an end of file). Then both are
** opened O_NONBLOCK (a FIFO put there meanwhile never holds a pool thread
** in open(2)) and checked again with fstat.
**
** A cancelled run sets `stop` and detaches: the task resumes with the
** cancellation while the job may be in the middle of a write. So that no
** byte reaches `to` after the copy returned, lua/braid.lua then waits,
** shielded, in _copy_wait until the job has ended (at most the chunk in
** flight). Ownership: the box (the Lua object) owns the job while it is
** idle; a queued job belongs to the pool until copy_done, which frees it
** when the box has gone meanwhile (its __gc sets `stop` and detaches).
** The thread touches only the paths, the buffer and err/at/what: nothing
** freed before copy_done.
*/
#define _GNU_SOURCE   /* SEEK_DATA */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "io/fs.h"

#define FNAME "braid.fs.copy"
#define COPY_MT "braid.CopyJob"
/* Per read and write: a prompt stop. As cp's buffer: each job's is
** charged from its start, and 40 copies of 1 MiB chunks had passed a
** 16 MB limit with nothing to copy. */
#define COPY_CHUNK (128 * 1024)

struct copy_job {
  uv_work_t work;
  braid_engine_t *E;
  braid_op_t *op;            /* run's op; NULL once detached */
  braid_op_t *waiter;        /* wait's op, or NULL */
  struct copy_job **box;     /* the Lua object; NULL once it is gone */
  atomic_int stop;           /* the op is gone: end before the next step */
  int queued, done;          /* handed to the pool; copy_done ran */
  int err;                   /* the first failure, a UV_E* code, or 0 */
  int at;                    /* 0: err concerns `from`, 1: `to` */
  const char *what;          /* the message instead of the code's, or NULL */
  char *from, *to;
  char *buf;
  struct braid_charge charge;   /* buf's bytes, against the memory limit */
};

static void job_free (struct copy_job *job) {
  braid__charge_set(&job->charge, job->E, 0);
  free(job->buf);
  free(job->from);
  free(job->to);
  free(job);
}

static const char *const not_regular = "not a regular file (a FIFO, socket "
  "or device: braid.fs.copy copies files)";

static int fail (struct copy_job *job, int err, int at) {
  if (job->err == 0) {
    job->err = err;
    job->at = at;
  }
  return err;
}

/* Opens `to` for writing: never waiting for a FIFO's reader, refusing a
** FIFO or socket. Returns the descriptor or -1 (job->err set). */
static int copy_open_to (struct copy_job *job, const struct stat *from_st,
                         int *same) {
  struct stat st;
  int fd;
  if (stat(job->to, &st) == 0 &&
      (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode))) {
    job->what = not_regular;
    fail(job, UV_EINVAL, 1);
    return -1;
  }
  fd = open(job->to, O_WRONLY | O_CREAT | O_NONBLOCK | O_CLOEXEC | O_NOCTTY,
            from_st->st_mode & 0777);
  if (fd < 0) {
    int e = errno;
    /* ENXIO: a FIFO without a reader (or a socket): say what it is */
    if (e == ENXIO && stat(job->to, &st) == 0 &&
        (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode))) {
      job->what = not_regular;
      e = EINVAL;
    }
    fail(job, -e, 1);
    return -1;
  }
  if (fstat(fd, &st) != 0) {
    fail(job, -errno, 1);
  } else if (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)) {
    job->what = not_regular;
    fail(job, UV_EINVAL, 1);
  } else if (st.st_dev == from_st->st_dev && st.st_ino == from_st->st_ino) {
    *same = 1;                 /* nothing to do, as uv_fs_copyfile */
  } else if (S_ISREG(st.st_mode) &&
             (ftruncate(fd, 0) != 0 ||
              fchmod(fd, from_st->st_mode & 07777) != 0)) {
    fail(job, -errno, 1);
  } else if (fcntl(fd, F_SETFL, 0) != 0) {   /* then blocking writes */
    fail(job, -errno, 1);
  }
  if (job->err != 0 || *same) {
    close(fd);
    return -1;
  }
  return fd;
}

/* Whether the chunk is all zero bytes (n > 0). */
static int all_zero (const char *b, size_t n) {
  return b[0] == 0 && memcmp(b, b + 1, n - 1) == 0;
}

/* Reads from in and writes to out, chunk after chunk, until the end.
** With `sparse` (a sparse source copied to a regular file, as cp's
** --sparse=auto), a chunk of zeros is a seek past it, a hole, not a write:
** a 5 GiB sparse file stays a few blocks instead of filling the disk. */
static void copy_loop (struct copy_job *job, int in, int out, int sparse) {
  int hole = 0;                /* the last chunk was skipped */
  for (;;) {
    ssize_t n, w;
    size_t off = 0;
    if (atomic_load(&job->stop)) {
      fail(job, UV_ECANCELED, 0);
      return;
    }
    if (sparse) {              /* a hole is skipped whole, unread */
      off_t pos = lseek(in, 0, SEEK_CUR), data = -1;
      if (pos >= 0) {
        data = lseek(in, pos, SEEK_DATA);
        if (data < 0 && errno == ENXIO)   /* a hole up to the end */
          data = lseek(in, 0, SEEK_END);
      }
      if (data > pos && pos >= 0) {
        if (lseek(out, data - pos, SEEK_CUR) < 0) {
          fail(job, -errno, 1);
          return;
        }
        hole = 1;
      } else if (pos >= 0 && data != pos) {
        lseek(in, pos, SEEK_SET);   /* no SEEK_DATA here: read on */
      }
    }
    n = read(in, job->buf, COPY_CHUNK);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      fail(job, -errno, 0);
      return;
    }
    if (n == 0) {
      off_t end;
      /* a file that ends in a hole: its size is the seek's */
      if (hole && ((end = lseek(out, 0, SEEK_CUR)) < 0 ||
                   ftruncate(out, end) != 0))
        fail(job, -errno, 1);
      return;
    }
    if (sparse && all_zero(job->buf, (size_t) n)) {
      if (lseek(out, (off_t) n, SEEK_CUR) < 0) {
        fail(job, -errno, 1);
        return;
      }
      hole = 1;
      continue;
    }
    hole = 0;
    while (off < (size_t) n) {
      if (atomic_load(&job->stop)) {
        fail(job, UV_ECANCELED, 1);
        return;
      }
      w = write(out, job->buf + off, (size_t) n - off);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {            /* no progress: never spin */
        fail(job, w < 0 ? -errno : UV_EIO, 1);
        return;
      }
      off += (size_t) w;
    }
  }
}

/* On a thread of libuv's pool. */
static void copy_work (uv_work_t *w) {
  struct copy_job *job = container_of(w, struct copy_job, work);
  struct stat st;
  int in, out, same = 0;
  if (atomic_load(&job->stop)) {
    fail(job, UV_ECANCELED, 0);
    return;
  }
  if (stat(job->from, &st) == 0 && !S_ISREG(st.st_mode)) {
    if (S_ISDIR(st.st_mode)) fail(job, UV_EISDIR, 0);
    else {
      job->what = not_regular;
      fail(job, UV_EINVAL, 0);
    }
    return;
  }
  in = open(job->from, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (in < 0) {
    fail(job, -errno, 0);
    return;
  }
  if (fstat(in, &st) != 0) {
    fail(job, -errno, 0);
  } else if (S_ISDIR(st.st_mode)) {
    fail(job, UV_EISDIR, 0);
  } else if (!S_ISREG(st.st_mode)) {
    job->what = not_regular;
    fail(job, UV_EINVAL, 0);
  } else if ((out = copy_open_to(job, &st, &same)) >= 0) {
    struct stat ost;
    /* sparse: fewer blocks than its size says (cp's test), and `to` a
    ** regular file (a device is written in full) */
    int sparse = (off_t) st.st_blocks * 512 < st.st_size &&
                 fstat(out, &ost) == 0 && S_ISREG(ost.st_mode);
    copy_loop(job, in, out, sparse);
    if (close(out) != 0) fail(job, -errno, 1);   /* NFS reports here */
  }
  close(in);
}

/* On the loop, exactly once per queued job. */
static void copy_done (uv_work_t *w, int status) {
  struct copy_job *job = container_of(w, struct copy_job, work);
  if (status < 0) fail(job, status, 0);   /* UV_ECANCELED before it ran */
  job->done = 1;
  if (job->op != NULL) {
    braid_op_t *op = job->op;
    job->op = NULL;
    braid_resume(op, 0);
  }
  if (job->waiter != NULL) {
    braid_op_t *op = job->waiter;
    job->waiter = NULL;
    braid_resume(op, 0);
  }
  if (job->box == NULL) job_free(job);
}

static struct copy_job *copy_check (lua_State *L) {
  struct copy_job **box = (struct copy_job **) luaL_checkudata(L, 1,
                                                               COPY_MT);
  if (*box == NULL) braid_usageerror(L, "braid.fs.copy: job gone");
  return *box;
}

/* Queues the job. When it cannot start, it is done at once with the
** code, and run_k raises the usual error with the path. */
static int run_start (braid_op_t *op, void *ud) {
  struct copy_job *job = (struct copy_job *) ud;
  int rc;
  *(struct copy_job **) braid_op_data(op) = job;
  braid_op_label(op, "fs.copy %s", job->from);
  job->op = op;
  rc = uv_queue_work(braid_loop(job->E), &job->work, copy_work, copy_done);
  if (rc == 0) {
    job->queued = 1;
    return 0;
  }
  job->op = NULL;
  job->done = 1;
  fail(job, rc, 0);
  braid_resume(op, 0);
  return 0;
}

/* Ends the op without run_k: the job is told to stop before its next
** step and detached; it stays the box's (_copy_wait waits for it). */
static void run_cancel (braid_op_t *op) {
  struct copy_job *job = *(struct copy_job **) braid_op_data(op);
  if (job->op == op) job->op = NULL;
  atomic_store(&job->stop, 1);
  if (!job->done) uv_cancel((uv_req_t *) &job->work);   /* copy_done runs */
}

/* The job's box is at 1. */
static int run_k (lua_State *L, braid_op_t *op) {
  struct copy_job *job = *(struct copy_job **) braid_op_data(op);
  const char *path = job->at ? job->to : job->from;
  if (job->err == 0) return 0;
  if (job->err == UV_ENOMEM) return braid__error_uv(L, UV_ENOMEM, FNAME);
  braid_pusherror(L, "io", braid__errname(job->err), "%s %s -> %s: %s",
                  FNAME, job->from, job->to,
                  job->what ? job->what : braid__strerror(job->err));
  lua_pushstring(L, path);
  lua_setfield(L, -2, "path");
  return lua_error(L);
}

/* fs._copy_run(job): the copy; once per job. */
static int l_copy_run (lua_State *L) {
  struct copy_job *job = copy_check(L);
  braid_check_suspend(L, FNAME);
  if (job->queued || job->done)
    return braid_usageerror(L, "braid.fs.copy: job already run");
  lua_settop(L, 1);
  return braid_suspendk(L, "copy", sizeof job, run_start, run_cancel, job,
                        run_k);
}

static int wait_start (braid_op_t *op, void *ud) {
  struct copy_job *job = (struct copy_job *) ud;
  *(struct copy_job **) braid_op_data(op) = job;
  job->waiter = op;
  return 0;
}

static void wait_cancel (braid_op_t *op) {
  struct copy_job *job = *(struct copy_job **) braid_op_data(op);
  if (job->waiter == op) job->waiter = NULL;
}

/* fs._copy_wait(job): returns once the job has ended (at once when it never
** started or has ended). */
static int l_copy_wait (lua_State *L) {
  struct copy_job *job = copy_check(L);
  if (!job->queued || job->done) return 0;
  lua_settop(L, 1);
  return braid_suspend(L, "copy", sizeof job, wait_start, wait_cancel, job);
}

/* __gc: an idle job is freed; a queued one is stopped and detached, and
** copy_done frees it. */
static int l_copy_gc (lua_State *L) {
  struct copy_job **box = (struct copy_job **) lua_touserdata(L, 1);
  struct copy_job *job = *box;
  if (job == NULL) return 0;
  *box = NULL;
  job->box = NULL;
  if (job->queued && !job->done) atomic_store(&job->stop, 1);
  else job_free(job);
  return 0;
}

/* fs._copy_new(from, to) -> job: checks the task and both paths, as
** braid.fs.copy's, and makes the job (its buffer charged against the
** memory limit). */
static int l_copy_new (lua_State *L) {
  braid_engine_t *E = braid_check_task(L, FNAME);
  struct copy_job **box, *job;
  braid__fs_check_path(L, 1, FNAME, 1);
  braid__fs_check_path(L, 2, FNAME, 1);
  braid_check_suspend(L, FNAME);
  box = (struct copy_job **) lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  luaL_setmetatable(L, COPY_MT);
  job = (struct copy_job *) braid__calloc(1, sizeof *job);
  if (job == NULL) return braid__error_uv(L, UV_ENOMEM, FNAME);
  job->E = E;
  atomic_init(&job->stop, 0);
  *box = job;
  job->box = box;
  if (braid__charge_set(&job->charge, E, COPY_CHUNK) != 0 ||
      (job->buf = (char *) braid__malloc(COPY_CHUNK)) == NULL ||
      (job->from = braid__strdup(lua_tostring(L, 1))) == NULL ||
      (job->to = braid__strdup(lua_tostring(L, 2))) == NULL)
    return braid__error_uv(L, UV_ENOMEM, FNAME);   /* __gc frees it */
  return 1;
}

/* Adds _copy_new, _copy_run and _copy_wait to the braid.fs table at the
** stack top. [-0, +0, m] */
void braid__open_fs_copy (lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"_copy_new", l_copy_new},
    {"_copy_run", l_copy_run},
    {"_copy_wait", l_copy_wait},
    {NULL, NULL}
  };
  luaL_newmetatable(L, COPY_MT);   /* no methods: nothing public */
  lua_pushcfunction(L, l_copy_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushliteral(L, COPY_MT);      /* as braid__class's */
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}
