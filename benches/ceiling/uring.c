/* ceiling-uring: the least work an io_uring server can do per tile request,
 * the io_uring counterpart of epoll.c, to measure what bounds benches/compare's
 * tiles row on this machine.
 *
 *   ceiling-uring PORT ROOT [THREADS]
 *   build: gcc -O2 -Wall -pthread uring.c -o ceiling-uring -luring
 *
 * Same contract as epoll.c: GET /tiles/<rest> is served from ROOT/<rest> with
 * no freshness checks; each file is opened once and kept with its response
 * head (up to MAX_OPEN; beyond that, open, serve, close); 404 otherwise; no
 * timeouts, minimal parsing, a request split across reads closes the
 * connection. One thread per core, each with its own ring and its own
 * SO_REUSEPORT listener.
 *
 * io_uring features used, all on one ring per thread:
 *   - multishot accept (one SQE accepts every connection of the listener);
 *   - multishot recv with a provided buffer ring (io_uring_register_buf_ring,
 *     set up by hand: liburing 2.3 has no io_uring_setup_buf_ring), so a
 *     connection costs no SQE per request on the receive side; re-armed when
 *     it ends (-ENOBUFS, or the kernel dropping multishot);
 *   - IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN (completion work
 *     runs only inside our own io_uring_enter, never by interrupting us),
 *     falling back to COOP_TASKRUN, then to no flag, if the kernel refuses
 *     (CEILING_TASKRUN=defer|coop|none forces one); SUBMIT_ALL; a registered
 *     ring fd; a large CQ;
 *   - one io_uring_submit_and_wait per loop iteration: every SQE that the
 *     batch of completions produced, for all connections, goes in with the
 *     one system call that also waits for the next completions.
 * So in the steady state a request costs no system call of its own: its recv
 * completion and its send are carried by the loop's shared io_uring_enter.
 * (Per connection there are a few more: setsockopt(TCP_NODELAY) at accept,
 * pipe2+fcntl in splice mode, close.)
 *
 * The body, chosen with CEILING_BODY:
 *   copy (default): each file's bytes are read once, at open, into one buffer
 *     laid out as head then body, so a response is ONE IORING_OP_SEND of that
 *     buffer (MSG_WAITALL: the kernel itself finishes a short send by waiting
 *     for room; a short result is still resubmitted from where it stopped).
 *     It costs one copy of the body into the socket buffer, as any non-zero-
 *     copy send; files are small (1-80 KiB) and all of them fit in memory.
 *     Transient files (beyond MAX_OPEN) are read per request, then freed.
 *   splice: zero-copy, the way sendfile would: per connection a 128 KiB
 *     pipe, and per response one linked chain of three SQEs:
 *       SEND(head, MSG_MORE) -> SPLICE(file@off -> pipe) -> SPLICE(pipe -> socket)
 *     the first two with IOSQE_CQE_SKIP_SUCCESS, so the chain posts exactly
 *     one CQE: the last one's, or else that of the first which fell short
 *     (the kernel then suppresses the CQEs of the ones it cancels), from which
 *     the rest is resubmitted. Caveat: the kernel always runs IORING_OP_SPLICE
 *     in an io-wq worker thread (io_splice_prep sets REQ_F_FORCE_ASYNC), so
 *     each response costs two hand-offs to a kernel worker: on a 2-core box
 *     this is expected to cost more than the copy it saves.
 * IORING_OP_SEND_ZC is not used: over loopback the receiver gets a copy
 * anyway, plus a notification CQE per send.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define BUF 4096          /* recv buffer size, as epoll.c */
#define BSTRIDE (BUF + 64) /* room for the NUL the parser writes */
#define NBUFS 512         /* provided recv buffers per thread (power of 2) */
#define BGID 0
#define QMAX 16           /* responses queued on one connection */
#define MAX_FD 65536
#define SQ_ENTRIES 1024
#define CQ_ENTRIES 8192
#ifndef PIPE_SZ
#define PIPE_SZ (128 * 1024) /* splice mode; -DPIPE_SZ=16384 tests bodies taking several chains */
#endif
#ifndef WAITALL
#define WAITALL MSG_WAITALL  /* -DWAITALL=0 tests the resubmission of short sends */
#endif

#include "common.h"


/* ---- connections, indexed by descriptor (process-wide, so shared by the
 * threads: a descriptor belongs to one ring at a time) ---- */

enum { T_ACCEPT = 1, T_RECV, T_SEND, T_HEAD, T_IN, T_OUT };
#define UD(fd, t) (((uint64_t)(fd) << 8) | (t))

struct resp { struct entry *e; int transient; }; /* e == NULL: 404 */

struct conn {
  unsigned char recv_armed; /* the multishot recv has not posted its last CQE */
  unsigned char busy;       /* the head of q is being sent (an op is in flight) */
  unsigned char closing;
  int pipe_r, pipe_w;       /* splice mode */
  struct resp q[QMAX];
  unsigned qh, qn;
  /* the response at q[qh]: plain send (copy mode, 404) */
  const char *out;
  size_t out_len, out_off;
  /* ... or splice chain: progress, and what the chain in flight asked for */
  size_t head_off, body_in, body_out, plan_in;
  size_t chunk;             /* most bytes to have in the pipe: its size less slack */
  int plan_head;
  int in_stalled;           /* the last file->pipe splice found the pipe full */
};

static struct conn *conns;

struct thr {
  struct io_uring ring;
  struct io_uring_buf_ring *br;
  char *bufs;
  unsigned recycled;
  int listener;
};

static struct io_uring_sqe *sqe_get(struct thr *t) {
  struct io_uring_sqe *s;
  while (!(s = io_uring_get_sqe(&t->ring))) io_uring_submit(&t->ring);
  return s;
}

/* A linked chain must not straddle two submissions. */
static void sq_need(struct thr *t, unsigned n) {
  if (io_uring_sq_space_left(&t->ring) < n) io_uring_submit(&t->ring);
}

static void arm_accept(struct thr *t) {
  struct io_uring_sqe *s = sqe_get(t);
  io_uring_prep_multishot_accept(s, t->listener, NULL, NULL, SOCK_CLOEXEC);
  s->user_data = UD(t->listener, T_ACCEPT);
}

static void arm_recv(struct thr *t, int fd, struct conn *c) {
  struct io_uring_sqe *s = sqe_get(t);
  io_uring_prep_recv_multishot(s, fd, NULL, 0, 0);
  s->flags |= IOSQE_BUFFER_SELECT;
  s->buf_group = BGID;
  s->user_data = UD(fd, T_RECV);
  c->recv_armed = 1;
}

static void recycle(struct thr *t, unsigned bid) {
  io_uring_buf_ring_add(t->br, t->bufs + (size_t)bid * BSTRIDE, BUF, bid,
                        io_uring_buf_ring_mask(NBUFS), t->recycled++);
}

static void maybe_close(int fd, struct conn *c) {
  if (!c->closing || c->recv_armed || c->busy) return;
  for (; c->qn; c->qn--, c->qh = (c->qh + 1) % QMAX)
    if (c->q[c->qh].transient) drop_transient(c->q[c->qh].e);
  int pr = c->pipe_r, pw = c->pipe_w;
  /* reset before close(fd): once fd is closed, another thread may accept the
   * same number and take conns[fd] */
  memset(c, 0, sizeof *c);
  c->pipe_r = c->pipe_w = -1;
  if (pr >= 0) { close(pr); close(pw); }
  close(fd);
}

/* Ends the connection once nothing of it is in flight. */
static void fail(int fd, struct conn *c) {
  if (!c->closing) {
    c->closing = 1;
    if (c->recv_armed) shutdown(fd, SHUT_RDWR); /* makes the multishot recv post its last CQE */
  }
  maybe_close(fd, c);
}

static void submit_send(struct thr *t, int fd, struct conn *c) {
  struct io_uring_sqe *s = sqe_get(t);
  io_uring_prep_send(s, fd, c->out + c->out_off, c->out_len - c->out_off, WAITALL | MSG_NOSIGNAL);
  s->user_data = UD(fd, T_SEND);
}

/* Submits what is left of the splice response at q[qh] as one linked chain
 * whose only CQE on success is the last SQE's. */
static void submit_chain(struct thr *t, int fd, struct conn *c) {
  struct entry *e = c->q[c->qh].e;
  struct io_uring_sqe *s = NULL;
  sq_need(t, 3);
  c->plan_head = c->head_off < (size_t)e->head_len;
  if (c->plan_head) {
    s = sqe_get(t);
    io_uring_prep_send(s, fd, e->head + c->head_off, e->head_len - c->head_off,
                       MSG_MORE | WAITALL | MSG_NOSIGNAL);
    s->user_data = UD(fd, T_HEAD);
    s->flags = IOSQE_IO_LINK | IOSQE_CQE_SKIP_SUCCESS;
  }
  size_t inpipe = c->body_in - c->body_out, left = e->len - c->body_in;
  c->plan_in = (c->in_stalled && inpipe) || inpipe >= c->chunk ? 0
               : left < c->chunk - inpipe ? left : c->chunk - inpipe;
  c->in_stalled = 0;
  if (c->plan_in) {
    s = sqe_get(t);
    io_uring_prep_splice(s, e->fd, c->body_in, c->pipe_w, -1, c->plan_in, SPLICE_F_NONBLOCK);
    s->user_data = UD(fd, T_IN);
    s->flags = IOSQE_IO_LINK | IOSQE_CQE_SKIP_SUCCESS;
  }
  if (inpipe + c->plan_in) {
    s = sqe_get(t);
    io_uring_prep_splice(s, c->pipe_r, -1, fd, -1, inpipe + c->plan_in, 0);
    s->user_data = UD(fd, T_OUT);
    s->flags = 0;
  } else if (s) {
    s->flags = 0; /* empty body: the head send is the chain's last, and must post */
  }
}

/* Starts the next queued response if none is in flight. */
static void start(struct thr *t, int fd, struct conn *c) {
  if (c->busy || c->closing || c->qn == 0) return;
  struct entry *e = c->q[c->qh].e;
  c->busy = 1;
  if (!e) {
    c->out = not_found;
    c->out_len = sizeof not_found - 1;
    c->out_off = 0;
    submit_send(t, fd, c);
  } else if (keep_bodies) {
    c->out = e->resp;
    c->out_len = e->head_len + e->len;
    c->out_off = 0;
    submit_send(t, fd, c);
  } else {
    c->head_off = c->body_in = c->body_out = 0;
    submit_chain(t, fd, c);
  }
}

static void finish(struct thr *t, int fd, struct conn *c) {
  struct resp *r = &c->q[c->qh];
  if (r->transient) drop_transient(r->e);
  c->qh = (c->qh + 1) % QMAX;
  c->qn--;
  c->busy = 0;
  if (c->closing) maybe_close(fd, c);
  else start(t, fd, c);
}

/* Queues a response on the connection *ctx; nonzero closes it (too many
 * pipelined requests at once). */
static int enqueue(void *ctx, struct entry *e, int transient) {
  struct conn *c = ctx;
  if (c->qn == QMAX) {
    if (transient) drop_transient(e);
    return -1;
  }
  c->q[(c->qh + c->qn) % QMAX] = (struct resp){e, transient};
  c->qn++;
  return 0;
}

/* Queues a response for every complete request in buf; returns 0 to keep
 * the connection. */
static int parse(struct conn *c, char *buf, size_t n) {
  return each_get(buf, n, enqueue, c);
}

static int transient_err(int res) { return res == -EAGAIN || res == -EINTR; }

static void handle(struct thr *t, struct io_uring_cqe *cqe) {
  int fd = (int)(cqe->user_data >> 8), tag = cqe->user_data & 0xff, res = cqe->res;
  struct conn *c = &conns[fd];
  switch (tag) {
  case T_ACCEPT:
    if (res >= 0) {
      int one = 1;
      if (res >= MAX_FD) { close(res); goto rearm; }
      struct conn *n = &conns[res];
      setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      memset(n, 0, sizeof *n);
      n->pipe_r = n->pipe_w = -1;
      if (!keep_bodies) {
        int p[2];
        if (pipe2(p, O_CLOEXEC) != 0) { close(res); goto rearm; }
        fcntl(p[1], F_SETPIPE_SZ, PIPE_SZ);
        int cap = fcntl(p[1], F_GETPIPE_SZ);
        n->pipe_r = p[0];
        n->pipe_w = p[1];
        n->chunk = cap > 2 * 8192 ? cap - 8192 : 4096;
      }
      arm_recv(t, res, n);
    }
  rearm:
    if (!(cqe->flags & IORING_CQE_F_MORE)) arm_accept(t);
    break;
  case T_RECV:
    if (cqe->flags & IORING_CQE_F_BUFFER) {
      unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
      if (res > 0 && !c->closing) {
        if (parse(c, t->bufs + (size_t)bid * BSTRIDE, res)) fail(fd, c);
        else start(t, fd, c);
      }
      recycle(t, bid);
    }
    if (!(cqe->flags & IORING_CQE_F_MORE)) {
      c->recv_armed = 0;
      if (!c->closing && (res > 0 || res == -ENOBUFS || transient_err(res))) arm_recv(t, fd, c);
      else fail(fd, c); /* 0: peer closed; or an error */
    }
    break;
  case T_SEND:
    if (res > 0) c->out_off += res;
    else if (!transient_err(res)) { c->busy = 0; fail(fd, c); break; }
    if (c->out_off == c->out_len) { finish(t, fd, c); break; }
    if (c->closing) { c->busy = 0; fail(fd, c); break; }
    submit_send(t, fd, c); /* short send: the rest */
    break;
  case T_HEAD: case T_IN: case T_OUT: {
    /* The chain's one CQE: every SQE before this one did all it was asked. */
    struct entry *e = c->q[c->qh].e;
    int bad = 0;
    if (tag != T_HEAD && c->plan_head) c->head_off = e->head_len;
    if (tag == T_OUT) c->body_in += c->plan_in;
    if (res > 0) {
      if (tag == T_HEAD) c->head_off += res;
      else if (tag == T_IN) c->body_in += res;
      else c->body_out += res;
    } else if (!transient_err(res)) {
      bad = 1; /* an error, or 0: nothing moved (peer gone, file shrunk) */
    } else if (tag == T_IN) {
      c->in_stalled = 1; /* pipe full: drain it before splicing more in */
    }
    if (bad || c->closing) { c->busy = 0; fail(fd, c); break; }
    if (c->head_off == (size_t)e->head_len && c->body_out == (size_t)e->len) finish(t, fd, c);
    else submit_chain(t, fd, c);
    break;
  }
  }
}

static const char *taskrun_name = "?";

static int ring_init(struct io_uring *ring) {
  const char *want = getenv("CEILING_TASKRUN");
  static const struct { const char *name; unsigned flags; } modes[] = {
      {"defer", IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN},
      {"coop", IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN},
      {"none", 0},
  };
  int r = -EINVAL;
  for (unsigned i = 0; i < sizeof modes / sizeof modes[0]; i++) {
    if (want && *want && strcmp(want, modes[i].name) != 0) continue;
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = modes[i].flags | IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL;
    p.cq_entries = CQ_ENTRIES;
    r = io_uring_queue_init_params(SQ_ENTRIES, ring, &p);
    if (r == 0) { taskrun_name = modes[i].name; return 0; }
    fprintf(stderr, "ceiling-uring: io_uring setup with taskrun=%s refused: %s\n", modes[i].name, strerror(-r));
  }
  return r;
}

static void *worker(void *arg) {
  int idx = (int)(intptr_t)arg;
  struct thr *t = calloc(1, sizeof *t);
  int l = listener(0);
  t->listener = l;

  int r = ring_init(&t->ring);
  if (r) { fprintf(stderr, "ceiling-uring: io_uring_queue_init: %s\n", strerror(-r)); exit(1); }
  int regfd = io_uring_register_ring_fd(&t->ring);

  /* the provided buffer ring for multishot recv */
  size_t rsz = NBUFS * sizeof(struct io_uring_buf);
  t->br = mmap(NULL, rsz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (t->br == MAP_FAILED) { perror("mmap"); exit(1); }
  io_uring_buf_ring_init(t->br);
  struct io_uring_buf_reg reg;
  memset(&reg, 0, sizeof reg);
  reg.ring_addr = (unsigned long)t->br;
  reg.ring_entries = NBUFS;
  reg.bgid = BGID;
  r = io_uring_register_buf_ring(&t->ring, &reg, 0);
  if (r) { fprintf(stderr, "ceiling-uring: io_uring_register_buf_ring: %s\n", strerror(-r)); exit(1); }
  t->bufs = malloc((size_t)NBUFS * BSTRIDE);
  for (unsigned i = 0; i < NBUFS; i++) recycle(t, i);
  io_uring_buf_ring_advance(t->br, t->recycled);
  t->recycled = 0;

  if (idx == 0)
    fprintf(stderr, "ceiling-uring: body=%s taskrun=%s ring_fd=%s, multishot accept+recv, buf ring %d x %d\n",
            keep_bodies ? "copy" : "splice", taskrun_name, regfd == 1 ? "registered" : "plain", NBUFS, BUF);

  arm_accept(t);
  for (;;) {
    r = io_uring_submit_and_wait(&t->ring, 1);
    if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
      fprintf(stderr, "ceiling-uring: io_uring_submit_and_wait: %s\n", strerror(-r));
      exit(1);
    }
    unsigned head, n = 0;
    struct io_uring_cqe *cqe;
    io_uring_for_each_cqe(&t->ring, head, cqe) {
      handle(t, cqe);
      n++;
    }
    io_uring_cq_advance(&t->ring, n);
    if (t->recycled) {
      io_uring_buf_ring_advance(t->br, t->recycled);
      t->recycled = 0;
    }
  }
  return NULL;
}

int main(int argc, char **argv) {
  int threads = setup(argc, argv, "ceiling-uring");
  const char *body = getenv("CEILING_BODY");
  if (body && *body && strcmp(body, "copy") != 0 && strcmp(body, "splice") != 0) {
    fprintf(stderr, "CEILING_BODY: copy or splice\n");
    return 2;
  }
  keep_bodies = !(body && strcmp(body, "splice") == 0);
  conns = calloc(MAX_FD, sizeof *conns);
  for (int i = 0; i < MAX_FD; i++) conns[i].pipe_r = conns[i].pipe_w = -1;
  pthread_t t[64];
  for (int i = 0; i < threads && i < 64; i++) pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i);
  fprintf(stdout, "listening on http://127.0.0.1:%d\n", port);
  fflush(stdout);
  pthread_join(t[0], NULL);
  return 0;
}
