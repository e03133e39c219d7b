/* What the ceiling servers (epoll.c, uring.c) share: the command line, the
 * listener, request splitting, and the file table. Each file is opened once,
 * on its first request, and kept for good with its response head (up to
 * MAX_OPEN; beyond that, open, serve, close: a "transient" entry the caller
 * drops). No freshness check of any kind: that is the point of a ceiling.
 * Included by both, after the system headers. */
#define MAX_OPEN 16000
#define SLOTS (1 << 16)

struct entry {
  char *path;        /* request path, the key */
  int fd;            /* -1: not cached */
  off_t len;
  char head[192];
  int head_len;
  char *resp;        /* copy mode: head then body, head_len + len bytes */
};

static struct entry table[SLOTS];
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static int open_count;
static const char *root;
static int port;
/* Whether lookup() also reads each file into `resp` (ceiling-uring's copy
 * mode); ceiling-epoll and splice mode send from the descriptor. */
static int keep_bodies;

static uint64_t hash(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
  return h;
}

static int make_head(char *out, size_t cap, off_t len) {
  return snprintf(out, cap,
                  "HTTP/1.1 200 OK\r\nServer: ceiling\r\nContent-Type: image/png\r\n"
                  "Content-Length: %lld\r\nCache-Control: public, max-age=60\r\n\r\n",
                  (long long)len);
}

/* copy mode: head and the whole file in one buffer */
static char *load(int fd, off_t len, const char *head, int head_len) {
  char *b = malloc(head_len + len);
  if (!b) return NULL;
  memcpy(b, head, head_len);
  off_t off = 0;
  while (off < len) {
    ssize_t r = pread(fd, b + head_len + off, len - off, off);
    if (r <= 0) { free(b); return NULL; }
    off += r;
  }
  return b;
}

static void drop_transient(struct entry *e) {
  close(e->fd);
  free(e->resp);
  free(e);
}

/* Finds or opens the entry for path; returns NULL if there is no such file.
 * *transient is set when the returned entry is the caller's, to drop with
 * drop_transient after the response. */
static struct entry *lookup(const char *path, size_t n, int *transient) {
  uint64_t h = hash(path, n);
  *transient = 0;
  for (uint64_t i = 0; i < SLOTS; i++) {
    struct entry *e = &table[(h + i) & (SLOTS - 1)];
    char *p = __atomic_load_n(&e->path, __ATOMIC_ACQUIRE);
    if (p == NULL) break;
    if (strlen(p) == n && memcmp(p, path, n) == 0) return e;
  }
  char file[1024];
  if (n < 7 || memcmp(path, "/tiles/", 7) != 0 || n - 7 + strlen(root) + 2 > sizeof file) return NULL;
  snprintf(file, sizeof file, "%s/%.*s", root, (int)(n - 7), path + 7);
  if (strstr(file, "..")) return NULL;
  int fd = open(file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NULL;
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) { close(fd); return NULL; }
  char head[192];
  int head_len = make_head(head, sizeof head, st.st_size);
  char *resp = NULL;
  if (keep_bodies && !(resp = load(fd, st.st_size, head, head_len))) { close(fd); return NULL; }
  pthread_mutex_lock(&table_lock);
  if (open_count < MAX_OPEN) {
    for (uint64_t i = 0; i < SLOTS; i++) {
      struct entry *e = &table[(h + i) & (SLOTS - 1)];
      if (e->path == NULL) {
        e->fd = fd;
        e->len = st.st_size;
        memcpy(e->head, head, head_len);
        e->head_len = head_len;
        e->resp = resp;
        __atomic_store_n(&e->path, strndup(path, n), __ATOMIC_RELEASE);
        open_count++;
        pthread_mutex_unlock(&table_lock);
        return e;
      }
      if (strlen(e->path) == n && memcmp(e->path, path, n) == 0) break; /* raced */
    }
  }
  pthread_mutex_unlock(&table_lock);
  struct entry *t = calloc(1, sizeof *t);
  if (!t) { close(fd); free(resp); return NULL; }
  t->fd = fd;
  t->len = st.st_size;
  memcpy(t->head, head, head_len);
  t->head_len = head_len;
  t->resp = resp;
  *transient = 1;
  return t;
}

/* Calls respond(ctx, e, transient) for every GET request in buf[0..n), in
 * order, with its file's entry (NULL: no such file, answer 404; a transient
 * entry is respond's to drop). Returns -1 as soon as a request is anything
 * else (a head split across reads included: not worth handling here) or
 * respond returns nonzero, else 0. Writes the NUL at buf[n]. */
static int each_get(char *buf, size_t n, int (*respond)(void *ctx, struct entry *e, int transient), void *ctx) {
  buf[n] = 0;
  for (char *at = buf; at < buf + n;) {
    char *end = strstr(at, "\r\n\r\n");
    if (!end || strncmp(at, "GET ", 4) != 0) return -1;
    char *path = at + 4, *sp = memchr(path, ' ', end - path);
    if (!sp) return -1;
    int transient;
    struct entry *e = lookup(path, sp - path, &transient);
    if (respond(ctx, e, transient)) return -1;
    at = end + 4;
  }
  return 0;
}

static const char not_found[] = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";

/* PORT ROOT [THREADS] into port and root; returns the thread count. Raises
 * the open-file limit to its hard limit (the table keeps 16,000 open). */
static int setup(int argc, char **argv, const char *name) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s PORT ROOT [THREADS]\n", name);
    exit(2);
  }
  port = atoi(argv[1]);
  root = argv[2];
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  return argc > 3 ? atoi(argv[3]) : (int)sysconf(_SC_NPROCESSORS_ONLN);
}

/* A listener of the thread's own on 127.0.0.1:port (SO_REUSEPORT: the
 * kernel spreads connections over the threads). */
static int listener(int type_flags) {
  int l = socket(AF_INET, SOCK_STREAM | type_flags, 0), one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(0x7f000001)};
  if (bind(l, (void *)&a, sizeof a) || listen(l, 1024)) {
    perror("bind");
    exit(1);
  }
  return l;
}
