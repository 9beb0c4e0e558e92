/*
** fs_tree.c: the walk of braid.fs.remove(path, {recursive = true}), the
** private fs._remove_tree(path) that lua/braid.lua calls after its checks
** ("." and "..", "/", "link/": refused there).
**
** The walk holds each directory open and works relative to it (openat
** with O_NOFOLLOW | O_DIRECTORY, unlinkat), as rm does, so that it cannot
** leave the tree: a name is entered only when it is, at that moment, a
** directory and not a link; anything else (a link to a directory
** included) is unlinked as itself. A directory that another process
** swaps for a link after it was listed (before or after it was entered)
** is then unlinked as a link, never followed, and the names removed
** inside a directory are always that directory's, whatever happens to
** the path leading to it. Only the path
** given is resolved as a path (its links included: the caller named it).
**
** The whole walk is one job on libuv's thread pool. Ownership, as fs.c's:
** until the op ends the job is the op's (tree_k frees it, or tree_cancel
** when the op ends without tree_k after the job was done). Cancelling a
** running job detaches it (job->op = NULL) and sets `stop`, which the
** walk reads before every entry; tree_done, which libuv calls exactly once
** on the loop, frees a detached job. The thread only reads the path and
** writes err, where and the stack of its own DIRs: nothing it touches is
** freed before tree_done.
*/
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "io/fs.h"

#define FNAME "braid.fs.remove"

struct tree_job {
  uv_work_t work;
  braid_op_t *op;            /* the call waiting for it; NULL once detached */
  atomic_int stop;           /* the op is gone: end at the next entry */
  int done;                  /* tree_done ran (the op may still wait for k) */
  int err;                   /* the first failure, a UV_E* code, or 0 */
  char *path;                /* the root, as given */
  /* Where the walk is (the root, then "/name" per level), for the
  ** error's path; cut at PATH_MAX (the error then names the root). */
  char where[PATH_MAX];
  size_t len;
};

/* The op's data: inline in the task. */
struct tree_call {
  struct tree_job *job;      /* NULL when the job could not start */
  int err;                   /* why it could not start */
};

static void job_free (struct tree_job *job) {
  free(job->path);
  free(job);
}

/* Appends "/name" to where (cut at its size). */
static void where_push (struct tree_job *job, const char *name) {
  int n = snprintf(job->where + job->len, sizeof job->where - job->len,
                   "/%s", name);
  if (n > 0) {
    job->len += (size_t) n;
    if (job->len >= sizeof job->where) job->len = sizeof job->where - 1;
  }
}

static int fail (struct tree_job *job, int err) {
  if (job->err == 0) job->err = err;
  return err;
}

static int remove_at (struct tree_job *job, int dfd, const char *name,
                      int dtype);

/* Removes everything in the directory open as fd (which it closes).
** Passes are repeated until one finds the directory empty: entries
** removed while a directory is read may hide others from that read. */
static int remove_entries (struct tree_job *job, int fd) {
  DIR *d = fdopendir(fd);
  int rc = 0, any;
  if (d == NULL) {
    rc = -errno;
    close(fd);
    return fail(job, rc);
  }
  do {
    struct dirent *e;
    any = 0;
    errno = 0;
    while (rc == 0 && (e = readdir(d)) != NULL) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
        continue;
      any = 1;
      rc = remove_at(job, dirfd(d), e->d_name, e->d_type);
      errno = 0;
    }
    if (rc == 0 && errno != 0) rc = fail(job, -errno);
    if (any && rc == 0) rewinddir(d);
  } while (any && rc == 0);
  closedir(d);
  return rc;
}

/* Removes `name` in dfd: a directory (not a link to one) with everything
** in it, anything else as itself. dtype is readdir's hint (DT_UNKNOWN for
** the root): a name that is no directory goes with one unlink. */
static int remove_at (struct tree_job *job, int dfd, const char *name,
                      int dtype) {
  size_t mark = job->len;
  int fd, rc;
  if (atomic_load(&job->stop)) return fail(job, UV_ECANCELED);
  if (dfd != AT_FDCWD) where_push(job, name);   /* the root is there */
  if (dtype != DT_DIR && dtype != DT_UNKNOWN) {
    if (unlinkat(dfd, name, 0) == 0) goto removed;
    if (errno != EISDIR && errno != EPERM) goto failed;
    /* it became a directory since it was listed: enter it */
  }
  fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno != ENOTDIR && errno != ELOOP) goto failed;
    if (unlinkat(dfd, name, 0) == 0) goto removed;   /* a link, a file */
    goto failed;
  }
  rc = remove_entries(job, fd);
  if (rc != 0) return rc;
  if (unlinkat(dfd, name, AT_REMOVEDIR) != 0) {
    /* swapped for a link (or a file) since it was entered: that goes as
    ** itself; the directory moved away is no longer this name */
    if (errno != ENOTDIR || unlinkat(dfd, name, 0) != 0) goto failed;
  }
removed:
  job->len = mark;
  job->where[mark] = '\0';
  return 0;
failed:
  /* an entry someone else removed meanwhile is gone, as wanted (rm -f) */
  if (errno == ENOENT && dfd != AT_FDCWD) goto removed;
  return fail(job, -errno);
}

/* On a thread of libuv's pool. */
static void tree_work (uv_work_t *w) {
  struct tree_job *job = container_of(w, struct tree_job, work);
  remove_at(job, AT_FDCWD, job->path, DT_UNKNOWN);
}

/* On the loop, exactly once per job. */
static void tree_done (uv_work_t *w, int status) {
  struct tree_job *job = container_of(w, struct tree_job, work);
  if (status < 0 && job->err == 0) job->err = status;   /* UV_ECANCELED */
  job->done = 1;
  if (job->op == NULL) job_free(job);
  else braid_resume(job->op, 0);
}

/* Queues the job; when it cannot start, resumes the op at once with the
** code, so that tree_k raises the usual error with the path. */
static int tree_start (braid_op_t *op, void *ud) {
  const char *path = (const char *) ud;
  struct tree_call *c = (struct tree_call *) braid_op_data(op);
  struct tree_job *job = (struct tree_job *) braid__calloc(1, sizeof *job);
  size_t n = strlen(path) + 1;
  int rc = UV_ENOMEM;
  braid_op_label(op, "fs.remove %s", path);
  if (job != NULL && (job->path = (char *) braid__malloc(n)) != NULL) {
    memcpy(job->path, path, n);
    job->len = (size_t) snprintf(job->where, sizeof job->where, "%s", path);
    if (job->len >= sizeof job->where) job->len = sizeof job->where - 1;
    job->op = op;
    atomic_init(&job->stop, 0);
    rc = uv_queue_work(braid_loop(braid_op_engine(op)), &job->work,
                       tree_work, tree_done);
    if (rc == 0) {
      c->job = job;
      return 0;
    }
  }
  if (job != NULL) job_free(job);
  c->err = rc;
  braid_resume(op, 0);
  return 0;
}

static void tree_cancel (braid_op_t *op) {
  struct tree_job *job = ((struct tree_call *) braid_op_data(op))->job;
  if (job == NULL) return;
  if (job->done) {   /* resumed, then abandoned before tree_k */
    job_free(job);
    return;
  }
  job->op = NULL;
  atomic_store(&job->stop, 1);
  uv_cancel((uv_req_t *) &job->work);   /* tree_done runs either way */
}

/* The continuation. The error names the entry that could not be removed
** (the path given when that name filled `where`: it may have been cut, and
** `path` must be true); the job is freed before anything is pushed (a
** push may raise). */
static int tree_k (lua_State *L, braid_op_t *op) {
  struct tree_call *c = (struct tree_call *) braid_op_data(op);
  struct tree_job *job = c->job;
  char where[PATH_MAX];
  int err = c->err;
  where[0] = '\0';
  if (job) {
    err = job->err;
    if (job->len < sizeof job->where - 1)
      memcpy(where, job->where, job->len + 1);
    job_free(job);
  }
  if (err == 0) return 0;
  if (where[0] != '\0') lua_pushstring(L, where);
  else lua_pushvalue(L, 1);
  return braid__fs_raise(L, FNAME, err, lua_tostring(L, -1), NULL, NULL);
}

/* braid.fs._remove_tree(path): the directory at path with everything in
** it, or whatever is at path; lua/braid.lua's fs.remove checks first. */
static int l_fs_remove_tree (lua_State *L) {
  const char *p;
  braid_check_task(L, FNAME);
  p = braid__fs_check_path(L, 1, FNAME, 1);
  lua_settop(L, 1);
  braid_check_suspend(L, FNAME);
  return braid_suspendk(L, "remove", sizeof(struct tree_call), tree_start,
                        tree_cancel, (void *) p, tree_k);
}

/* Adds _remove_tree to the braid.fs table at the stack top. [-0, +0, m] */
void braid__open_fs_tree (lua_State *L) {
  lua_pushcfunction(L, l_fs_remove_tree);
  lua_setfield(L, -2, "_remove_tree");
}
