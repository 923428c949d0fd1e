/*
 * tlsload: a small single-threaded mutual-TLS echo load generator (epoll + OpenSSL 3, Linux).
 *
 * Why it exists: benchmarks/run.py pins the Python servers it compares on one CPU core.
 * Our Python load generator spends about 25 us of CPU per round trip, as much as the
 * servers themselves, so it runs out of CPU as soon as they do and cannot tell them apart.
 * This one spends about 3 us of user CPU per small round trip (about 10 us counting the
 * kernel's loopback TCP work, which any client pays), so the server is the bottleneck.
 *
 * Build:  cc -O2 -Wall -Wextra -o tlsload benchmarks/tlsload.c -lssl -lcrypto
 *
 * Usage:  tlsload --connect HOST:PORT --ca FILE --cert FILE --key FILE
 *                 [--servername NAME] [--clients N] [--size N | --size MIN-MAX]
 *                 [--duration SECONDS] [--warmup SECONDS] [--seed N] [--timeout SECONDS]
 *                 [--rate R | --hold SECONDS]
 *
 * All clients connect and handshake at once; when every one is done, each runs a closed
 * loop (send one message, read its echo, compare, next).  Round trips that complete in
 * [warmup end, warmup end + duration] are counted and one JSON line goes to stdout.
 *
 * --rate R runs an open loop instead (as wrk2 does): R round trips per second over all
 * clients, on a fixed schedule.  With N clients and t0 the end of the handshakes, client i
 * is meant to send its message k at t0 + (i / N + k) * N / R seconds; it sends it then, or
 * as soon as its previous echo is back if that is later (still one message in flight per
 * connection).  Latency is measured from that intended time, not from the actual send:
 * a closed loop sends nothing while the server stalls, so the stall shows up in one round
 * trip per client ("coordinated omission"); measured from the schedule, it shows up in
 * every message that should have gone out during it, as real users arriving at that rate
 * would see it.  The JSON's last key, "rate", is R (null for the closed loop).
 *
 * --hold SECONDS measures what idle connections cost the server (benchmarks/run.py (d*)):
 * the clients connect HOLD_WAVE at a time, not all at once (a storm of handshakes would
 * raise the server's memory high-water mark, not what idle connections hold); each sends
 * one message, checks its echo and then stays open and silent.  Once every one has (or
 * has failed), one JSON line {"held": N} goes to stdout; the clients are held until
 * SECONDS from the start pass or stdin reaches end-of-file, whichever is first, and the
 * usual report follows (--duration and --warmup do not apply; --timeout is per client).
 * If SECONDS pass before every client is held, there is no "held" line and each client
 * not held yet, opened or not, counts as a timeout.  A server that closes a held
 * connection is an error ("closed").
 *
 * Like Go's crypto/tls and rustls, tlsload sends exactly the certificates in --cert.  An
 * OpenSSL client left to itself also sends the CA it finds in --ca, and the server keeps
 * every certificate a client sent for as long as the connection lives: 5 KB per idle
 * connection with our P-256 development certificates.
 * Exit status: 0 ok, 1 if any client failed (see "errors"), 2 for a bad command line.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

enum { E_CONNECT, E_HANDSHAKE, E_CLOSED, E_MISMATCH, E_TIMEOUT, E_IO, E_KINDS };
static const char *const error_names[E_KINDS] = {"connect", "handshake", "closed", "mismatch", "timeout", "io"};

enum state { CONNECTING, HANDSHAKING, READY, RUNNING, WAITING, DEAD }; /* WAITING: open loop, not due yet */

struct client {
    int fd;
    SSL *ssl;
    enum state state;
    uint32_t events;              /* what epoll watches now: skips redundant epoll_ctl calls */
    uint32_t write_wants, read_wants; /* EPOLLIN/EPOLLOUT a blocked SSL_write/SSL_read waits for */
    const unsigned char *msg;
    size_t len, sent, received;
    int64_t start_ns; /* when the message was sent: for --timeout */
    int64_t due_ns;   /* what its latency counts from: start_ns, or its intended time with --rate */
    uint64_t done; /* completed round trips (a TLS 1.3 client learns its certificate was refused only then) */
};

#define HIST_US 1000000 /* 1-us buckets up to 1 s: exact percentiles at a few MB of memory */
#define HIST_SLOW 99000 /* then 1-ms buckets up to 100 s: an overloaded open loop gets there */
#define CHUNK 16384     /* one TLS record per SSL_write, so big messages interleave with reads */
#define MAX_SIZE (64u << 20)
#define CHECK_NS 10000000 /* look for timed-out round trips every 10 ms, not on every event */
#define HOLD_WAVE 16      /* --hold: connections being set up at once */

static struct client *clients;
static int nclients = 64, epfd = -1;
static size_t min_size = 1, max_size = 100;
static unsigned char *pool;
static size_t pool_len;
static uint64_t rng_state = 1;
static uint64_t *hist, overflow, counted, bytes, errors[E_KINDS];
static int64_t max_ns, window_start = INT64_MAX, window_end = INT64_MAX;
static int alive;
/* Open loop (--rate): ns_per_slot = 1e9 / R; the clients waiting for their next intended
 * time, in a min-heap on due_ns; one timerfd armed for the earliest (armed_ns). */
static double rate, ns_per_slot;
static int64_t t0;
static struct client **heap;
static int heap_len, timer_fd = -1;
static int64_t armed_ns = INT64_MAX;
/* --hold: how long to hold (0: not holding); stdin's place in the epoll set. */
static int64_t hold;
static struct client stdin_tag;

static const char usage[] =
    "usage: tlsload --connect HOST:PORT --ca FILE --cert FILE --key FILE\n"
    "               [--servername NAME] [--clients N] [--size N | --size MIN-MAX]\n"
    "               [--duration SECONDS] [--warmup SECONDS] [--seed N] [--timeout SECONDS]\n"
    "               [--rate R | --hold SECONDS]\n"
    "\n"
    "A mutual-TLS echo load generator (epoll + OpenSSL): N clients echo messages of --size\n"
    "bytes, every echoed byte compared; one JSON line of results goes to stdout.\n"
    "\n"
    "  --connect HOST:PORT   the echo server ([ADDR]:PORT for IPv6)\n"
    "  --ca, --cert, --key   the CA that signed the server, and the client's certificate and key\n"
    "  --servername NAME     name to verify the server's certificate against (default: localhost)\n"
    "  --clients N           concurrent connections (default: 64)\n"
    "  --size N | MIN-MAX    message size in bytes, fixed or uniform (default: 1-100)\n"
    "  --duration SECONDS    measured time after the warm-up (default: 4)\n"
    "  --warmup SECONDS      unmeasured time after the handshakes (default: 1)\n"
    "  --seed N              seed of the message sizes and contents\n"
    "  --timeout SECONDS     for a handshake or an echo (default: 10)\n"
    "  --rate R              open loop: R round trips/s in total, latency from the intended\n"
    "                        send time (default: closed loop)\n"
    "  --hold SECONDS        connect, echo once, then hold every connection idle (prints\n"
    "                        {\"held\": N} once all are held) until SECONDS pass or stdin ends\n"
    "  --help                this text\n";

static void usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("tlsload: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static int64_t now_ns(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        fputs("tlsload: error: clock_gettime failed\n", stderr);
        exit(1);
    }
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* splitmix64: tiny, seedable, and good enough to vary message sizes and contents. */
static uint64_t rng_next(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static unsigned long long parse_uint(const char *flag, const char *s, unsigned long long lo, unsigned long long hi) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v < lo || v > hi)
        usage_error("%s: expected an integer in %llu..%llu, got '%s'", flag, lo, hi, s);
    return v;
}

static int64_t parse_seconds(const char *flag, const char *s, int allow_zero) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= 0 && v <= 1e6) || (v == 0 && !allow_zero))
        usage_error("%s: expected a number of seconds%s, got '%s'", flag, allow_zero ? "" : " > 0", s);
    return (int64_t)(v * 1e9);
}

static double parse_rate(const char *s) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !isfinite(v) || !(v > 0))
        usage_error("--rate: expected a number of round trips per second > 0, got '%s'", s);
    return v;
}

static void parse_size(const char *s) {
    char buf[64];
    if (strlen(s) >= sizeof buf)
        usage_error("--size: expected N or MIN-MAX, got '%s'", s);
    strcpy(buf, s);
    char *dash = strchr(buf, '-');
    if (dash != NULL)
        *dash = '\0';
    min_size = parse_uint("--size", buf, 1, MAX_SIZE);
    max_size = dash != NULL ? parse_uint("--size", dash + 1, 1, MAX_SIZE) : min_size;
    if (max_size < min_size)
        usage_error("--size: MIN is larger than MAX in '%s'", s);
}

/* HOST:PORT with HOST an IPv4 literal or a [bracketed] IPv6 literal. */
static struct addrinfo *parse_address(const char *s) {
    char buf[256], *host = buf, *colon;
    if (strlen(s) >= sizeof buf)
        usage_error("--connect: address too long");
    strcpy(buf, s);
    if (buf[0] == '[') {
        char *close = strchr(buf, ']');
        colon = close != NULL && close[1] == ':' ? close + 1 : NULL;
        if (close != NULL)
            *close = '\0';
        host = buf + 1;
    } else {
        colon = strchr(buf, ':');
        if (colon != NULL && strchr(colon + 1, ':') != NULL)
            colon = NULL; /* an IPv6 address without brackets: which colon is the port's? */
    }
    if (colon == NULL)
        usage_error("--connect: expected HOST:PORT (IPv6 as [ADDR]:PORT), got '%s'", s);
    *colon = '\0';
    const char *port = colon + 1;
    parse_uint("--connect port", port, 0, 65535); /* getaddrinfo would take 99999 */
    struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0)
        usage_error("--connect '%s': %s", s, gai_strerror(rc));
    return res;
}

/* OpenSSL reports a missing file as "system lib": say what really went wrong first. */
static void check_readable(const char *flag, const char *path) {
    FILE *f = fopen(path, "r");
    if (f == NULL)
        usage_error("%s %s: %s", flag, path, strerror(errno));
    fclose(f);
}

static void tls_setup_error(const char *what, const char *file) {
    char reason[256];
    ERR_error_string_n(ERR_peek_last_error(), reason, sizeof reason);
    usage_error("%s%s%s: %s", what, *file ? " " : "", file, reason);
}

static void fail(struct client *c, int kind) {
    if (c->state == DEAD)
        return;
    errors[kind]++;
    SSL_free(c->ssl); /* NULL-safe */
    c->ssl = NULL;
    if (c->fd >= 0)
        close(c->fd); /* also takes it out of the epoll set; nothing to do if it fails */
    c->fd = -1;
    c->state = DEAD;
    alive--;
    ERR_clear_error(); /* SSL_get_error on the other connections must see an empty queue */
}

static void set_events(struct client *c, uint32_t events) {
    if (events == c->events)
        return;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0) {
        fail(c, E_IO);
        return;
    }
    c->events = events;
}

/* Which error kind a failed SSL_connect/SSL_read/SSL_write is (errno is still the call's). */
static int failure_kind(const struct client *c, int err) {
    if (c->state == HANDSHAKING)
        return E_HANDSHAKE;
    if (err == SSL_ERROR_ZERO_RETURN)
        return E_CLOSED;
    if (err == SSL_ERROR_SYSCALL)
        return errno == 0 || errno == ECONNRESET || errno == EPIPE ? E_CLOSED : E_IO;
    if (err == SSL_ERROR_SSL) {
        unsigned long e = ERR_peek_error();
        if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
            return E_CLOSED;
        /* With TLS 1.3 the server checks our certificate after our handshake is over:
         * its alert comes with the first reply. */
        return c->done == 0 ? E_HANDSHAKE : E_IO;
    }
    return E_IO;
}

/* After an SSL call returned r <= 0: 1 if it only has to wait (*wants says for what), else
 * the client has failed and 0.  Either direction may want either event. */
static int must_wait(struct client *c, int r, uint32_t *wants) {
    int err = SSL_get_error(c->ssl, r);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        *wants = err == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT;
        return 1;
    }
    fail(c, failure_kind(c, err));
    return 0;
}

static void start_message(struct client *c, int64_t due, int64_t now);
static void pump(struct client *c, uint32_t events);

static void handshake(struct client *c) {
    int r = SSL_connect(c->ssl);
    uint32_t wants;
    if (r == 1 && hold > 0) { /* nobody waits for the others: one echo, then idle */
        int64_t now = now_ns();
        c->state = RUNNING;
        start_message(c, now, now);
        pump(c, 0);
    } else if (r == 1) {
        c->state = READY;
        set_events(c, 0); /* idle until every client is ready; session tickets can wait */
    } else if (must_wait(c, r, &wants)) {
        set_events(c, wants);
    }
}

static void finish_connect(struct client *c) {
    int soerr = 0;
    socklen_t len = sizeof soerr;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0 || soerr != 0) {
        fail(c, E_CONNECT);
        return;
    }
    c->state = HANDSHAKING;
    handshake(c);
}

static void start_message(struct client *c, int64_t due, int64_t now) {
    c->len = min_size + (size_t)(rng_next() % (max_size - min_size + 1));
    c->msg = pool + rng_next() % (pool_len - c->len + 1);
    c->sent = c->received = 0;
    c->write_wants = c->read_wants = 0;
    c->start_ns = now;
    c->due_ns = due;
}

static void record(struct client *c, int64_t t) {
    c->done++;
    if (t < window_start || t > window_end)
        return;
    int64_t ns = t - c->due_ns;
    if (ns / 1000 < HIST_US)
        hist[ns / 1000]++;
    else if (ns / 1000000 - 1000 < HIST_SLOW)
        hist[HIST_US + ns / 1000000 - 1000]++;
    else
        overflow++;
    if (ns > max_ns)
        max_ns = ns;
    counted++;
    bytes += c->len;
}

/* Open loop: when client c is meant to send its next message (number c->done), computed
 * from t0 each time rather than by adding periods, so rounding never accumulates. */
static int64_t intended_ns(const struct client *c) {
    double slot = (double)(c - clients) + (double)c->done * nclients;
    double offset = slot * ns_per_slot;
    return t0 + (offset < 1e18 ? (int64_t)offset : (int64_t)1e18); /* 1e18 ns: 31 years, never */
}

/* The waiting clients: a binary min-heap on due_ns.  Each client is in it at most once
 * (it goes in when it starts waiting and out when it is due), so nclients entries do. */
static void heap_push(struct client *c) {
    int i = heap_len++;
    while (i > 0 && heap[(i - 1) / 2]->due_ns > c->due_ns) {
        heap[i] = heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    heap[i] = c;
}

static struct client *heap_pop(void) {
    struct client *top = heap[0], *last = heap[--heap_len];
    int i = 0;
    for (;;) {
        int child = 2 * i + 1;
        if (child >= heap_len)
            break;
        if (child + 1 < heap_len && heap[child + 1]->due_ns < heap[child]->due_ns)
            child++;
        if (last->due_ns <= heap[child]->due_ns)
            break;
        heap[i] = heap[child];
        i = child;
    }
    heap[i] = last; /* when the heap is now empty this writes a dead slot: harmless */
    return top;
}

/* Wait for the next intended time (the caller has checked it is still to come). */
static void wait_for_slot(struct client *c, int64_t due) {
    c->state = WAITING;
    c->due_ns = due;
    heap_push(c);
}

/* Push the message out and read its echo back, both as far as the socket allows: a big
 * message does not fit in the socket buffers, so writing must not wait for reading.
 * Reading is only tried when epoll said so: a read that can only fail costs a syscall. */
static void pump(struct client *c, uint32_t events) {
    static unsigned char scratch[65536];
    int readable = (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) || c->read_wants == EPOLLOUT;
    for (;;) {
        int progress = 0;
        while (c->sent < c->len) {
            size_t n = c->len - c->sent < CHUNK ? c->len - c->sent : CHUNK;
            int r = SSL_write(c->ssl, c->msg + c->sent, (int)n);
            if (r > 0) {
                c->sent += (size_t)r;
                c->write_wants = 0;
                progress = 1;
                continue;
            }
            if (!must_wait(c, r, &c->write_wants))
                return;
            break;
        }
        while (readable && c->received < c->len) {
            size_t n = c->len - c->received < sizeof scratch ? c->len - c->received : sizeof scratch;
            int r = SSL_read(c->ssl, scratch, (int)n);
            if (r > 0) {
                if (memcmp(scratch, c->msg + c->received, (size_t)r) != 0) {
                    fail(c, E_MISMATCH);
                    return;
                }
                c->received += (size_t)r;
                c->read_wants = 0;
                progress = 1;
                continue;
            }
            /* A TLS 1.3 session ticket is consumed here and shows up as WANT_READ. */
            if (!must_wait(c, r, &c->read_wants))
                return;
            readable = 0;
            break;
        }
        if (c->received == c->len) {
            int64_t t = now_ns();
            record(c, t);
            if (hold > 0) {
                c->state = WAITING; /* silent from now on: idle_read watches for the server */
                set_events(c, EPOLLIN);
                return;
            }
            if (rate > 0) {
                int64_t due = intended_ns(c);
                if (due > t) {
                    wait_for_slot(c, due);
                    break; /* keep EPOLLIN: a hang-up while we wait is seen at once */
                }
                start_message(c, due, t); /* behind schedule: send it now */
            } else {
                int64_t start = now_ns();
                start_message(c, start, start);
            }
            readable = 0; /* its echo cannot be there yet */
            continue;
        }
        if (!progress)
            break;
    }
    /* Level-triggered: ask for EPOLLOUT only while something is blocked on it, or we spin. */
    int out = c->write_wants == EPOLLOUT || c->read_wants == EPOLLOUT;
    set_events(c, EPOLLIN | (out ? EPOLLOUT : 0));
}

/* Open loop or --hold: the server has something to say while nothing is in flight.  A TLS 1.3
 * session ticket is consumed (WANT_READ); a close or an alert fails the client; echoed
 * bytes for a message we have not sent are a mismatch. */
static void idle_read(struct client *c, uint32_t events) {
    unsigned char byte[256];
    if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP)) && c->read_wants != EPOLLOUT)
        return;
    int r = SSL_read(c->ssl, byte, sizeof byte);
    if (r > 0) {
        fail(c, E_MISMATCH);
        return;
    }
    if (must_wait(c, r, &c->read_wants))
        set_events(c, EPOLLIN | (c->read_wants == EPOLLOUT ? EPOLLOUT : 0));
}

static void arm_timer(int64_t at) {
    struct itimerspec when = {.it_value = {.tv_sec = at / 1000000000, .tv_nsec = at % 1000000000}};
    if (timerfd_settime(timer_fd, TFD_TIMER_ABSTIME, &when, NULL) != 0) {
        fputs("tlsload: error: timerfd_settime failed\n", stderr);
        exit(1);
    }
    armed_ns = at;
}

/* Open loop: send every message whose intended time has come, then arm the timer for the
 * next one.  O(log clients) per message sent; one timerfd_settime per change of the earliest. */
static void send_due(int64_t now) {
    while (heap_len > 0 && heap[0]->due_ns <= now) {
        struct client *c = heap_pop();
        if (c->state != WAITING)
            continue; /* it died while it waited */
        c->state = RUNNING;
        start_message(c, c->due_ns, now);
        pump(c, 0);
    }
    if (heap_len > 0 && heap[0]->due_ns != armed_ns)
        arm_timer(heap[0]->due_ns);
}

static void open_client(struct client *c, SSL_CTX *ctx, const struct addrinfo *ai, const char *name) {
    c->state = CONNECTING;
    c->start_ns = now_ns(); /* --hold: its --timeout counts from here */
    alive++;
    c->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        fail(c, E_IO);
        return;
    }
    int one = 1; /* each message is one small write: never let Nagle hold it back */
    c->ssl = SSL_new(ctx);
    if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0 || c->ssl == NULL ||
        SSL_set_fd(c->ssl, c->fd) != 1 || SSL_set_tlsext_host_name(c->ssl, name) != 1 ||
        SSL_set1_host(c->ssl, name) != 1) {
        fail(c, E_IO);
        return;
    }
    c->events = EPOLLOUT;
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
        fail(c, E_IO);
        return;
    }
    if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) == 0) {
        c->state = HANDSHAKING;
        handshake(c);
    } else if (errno != EINPROGRESS) {
        fail(c, E_CONNECT);
    }
}

/* The smallest latency that at least permille/1000 of the round trips did not exceed
 * (to the microsecond below 1 s, to the millisecond from 1 s to 100 s). */
static int64_t percentile_us(uint64_t permille) {
    uint64_t rank = (counted * permille + 999) / 1000, seen = 0;
    for (int i = 0; i < HIST_US + HIST_SLOW; i++)
        if ((seen += hist[i]) >= rank)
            return i < HIST_US ? i : ((int64_t)i - HIST_US + 1000) * 1000;
    return max_ns / 1000; /* in the overflow: the max is the best bound we have */
}

int main(int argc, char **argv) {
    const char *connect_to = NULL, *ca = NULL, *cert = NULL, *key = NULL, *name = "localhost";
    int64_t duration = 4000000000, warmup = 1000000000, timeout = 10000000000;
    static const char *const flags[] = {"--connect", "--ca", "--cert", "--key", "--servername", "--clients",
                                        "--size", "--duration", "--warmup", "--seed", "--timeout", "--rate",
                                        "--hold"};
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        }
    for (int i = 1; i < argc; i += 2) {
        const char *flag = argv[i], *value = argv[i + 1]; /* argv[argc] is NULL */
        int f = 0, nflags = (int)(sizeof flags / sizeof *flags);
        while (f < nflags && strcmp(flag, flags[f]) != 0)
            f++;
        if (f == nflags)
            usage_error("unknown flag '%s' (see --help)", flag);
        if (value == NULL)
            usage_error("%s needs a value", flag);
        switch (f) {
        case 0: connect_to = value; break;
        case 1: ca = value; break;
        case 2: cert = value; break;
        case 3: key = value; break;
        case 4: name = value; break;
        case 5: nclients = (int)parse_uint(flag, value, 1, 100000); break;
        case 6: parse_size(value); break;
        case 7: duration = parse_seconds(flag, value, 0); break;
        case 8: warmup = parse_seconds(flag, value, 1); break;
        case 9: rng_state = parse_uint(flag, value, 0, UINT64_MAX); break;
        case 10: timeout = parse_seconds(flag, value, 0); break;
        case 11: rate = parse_rate(value); break;
        default: hold = parse_seconds(flag, value, 0); break;
        }
    }
    if (hold > 0 && rate > 0)
        usage_error("--hold and --rate cannot be used together");
    if (hold > 0) {
        duration = hold;
        warmup = 0;
    }
    if (connect_to == NULL || ca == NULL || cert == NULL || key == NULL)
        usage_error("--connect, --ca, --cert and --key are required");
    check_readable("--ca", ca);
    check_readable("--cert", cert);
    check_readable("--key", key);
    struct addrinfo *addr = parse_address(connect_to);

    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL || SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1)
        tls_setup_error("cannot create a TLS context", "");
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1)
        tls_setup_error("cannot load --ca", ca);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
        tls_setup_error("cannot load --cert", cert);
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
        tls_setup_error("cannot load --key", key);
    if (SSL_CTX_check_private_key(ctx) != 1)
        tls_setup_error("--key does not match --cert", cert);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    /* NO_AUTO_CHAIN: send --cert's chain as it is, not completed from --ca (see the top). */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_NO_AUTO_CHAIN);
    /* One read() per record instead of two (header, then body).  Read-ahead can leave data
     * in OpenSSL where epoll cannot see it, but we only stop reading once a message's echo
     * is complete, and the server has nothing more to send until the next one. */
    SSL_CTX_set_read_ahead(ctx, 1);

    /* One pool, random offsets into it: messages differ without generating bytes per message. */
    pool_len = max_size + 65536;
    pool = malloc(pool_len);
    hist = calloc(HIST_US + HIST_SLOW, sizeof *hist);
    clients = calloc((size_t)nclients, sizeof *clients);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    int timer_ok = 1;
    if (rate > 0 && epfd >= 0) {
        /* epoll_wait's timeout is in milliseconds and slack-rounded: sends go by a timerfd,
         * armed (absolute, CLOCK_MONOTONIC) for the earliest due one, in the same epoll set. */
        ns_per_slot = 1e9 / rate;
        heap = calloc((size_t)nclients, sizeof *heap);
        timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL}; /* NULL: the timer */
        timer_ok = heap != NULL && timer_fd >= 0 && epoll_ctl(epfd, EPOLL_CTL_ADD, timer_fd, &ev) == 0;
    }
    /* A server that resets us mid-write would otherwise kill us with SIGPIPE. */
    if (pool == NULL || hist == NULL || clients == NULL || epfd < 0 || !timer_ok ||
        signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
        fputs("tlsload: error: out of memory or file descriptors\n", stderr);
        return 2;
    }
    for (size_t i = 0; i < pool_len; i += 8) {
        uint64_t r = rng_next();
        memcpy(pool + i, &r, pool_len - i < 8 ? pool_len - i : 8);
    }

    int64_t connect_deadline = now_ns() + timeout, last_check = now_ns();
    /* Clients from next_open on are not opened yet (--hold): loops over clients stop there. */
    int started = 0, announced = 0, stop_now = 0, next_open = 0;
    if (hold > 0) { /* no common start: the window is the hold, from now */
        started = 1;
        window_start = t0 = last_check;
        window_end = window_start + hold;
    }
    struct epoll_event events[256];
    while (!stop_now) {
        /* All at once, or (--hold) up to HOLD_WAVE connections being set up. */
        int busy = 0;
        for (int i = 0; hold > 0 && i < next_open; i++)
            busy += clients[i].state != WAITING && clients[i].state != DEAD;
        while (next_open < nclients && (hold == 0 || busy < HOLD_WAVE)) {
            open_client(&clients[next_open++], ctx, addr, name);
            busy++;
        }
        if (alive == 0 && next_open == nclients)
            break; /* (--hold: a wave that failed at once is followed by the next) */
        int n = epoll_wait(epfd, events, 256, 10);
        if (n < 0 && errno != EINTR) {
            for (int i = 0; i < next_open; i++)
                fail(&clients[i], E_IO);
            break;
        }
        for (int i = 0; i < n; i++) {
            struct client *c = events[i].data.ptr;
            if (c == NULL) { /* the timer: send_due below does the work */
                uint64_t expirations;
                if (read(timer_fd, &expirations, sizeof expirations) < 0 && errno != EAGAIN) {
                    fputs("tlsload: error: reading the timerfd failed\n", stderr);
                    exit(1);
                }
                continue;
            }
            if (c == &stdin_tag) { /* --hold: anything but data (EOF, an error) ends it */
                char buf[256];
                ssize_t r = read(STDIN_FILENO, buf, sizeof buf);
                stop_now = r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR);
                continue;
            }
            switch (c->state) {
            case CONNECTING: finish_connect(c); break;
            case HANDSHAKING: handshake(c); break;
            case READY: /* it has nothing to say yet: only a hang-up wakes us here */
                if (events[i].events & (EPOLLERR | EPOLLHUP))
                    fail(c, E_CLOSED);
                break;
            case RUNNING: pump(c, events[i].events); break;
            case WAITING: idle_read(c, events[i].events); break;
            case DEAD: break;
            }
        }
        int64_t now = now_ns();
        if (!started) {
            int pending = 0;
            for (int i = 0; i < next_open; i++)
                if (clients[i].state == CONNECTING || clients[i].state == HANDSHAKING) {
                    if (now > connect_deadline)
                        fail(&clients[i], E_TIMEOUT);
                    else
                        pending++;
                }
            if (pending > 0 || alive == 0)
                continue;
            started = 1;
            window_start = now + warmup;
            window_end = window_start + duration;
            last_check = now;
            t0 = now;
            for (int i = 0; i < next_open; i++)
                if (clients[i].state == READY && rate > 0) {
                    wait_for_slot(&clients[i], intended_ns(&clients[i])); /* client 0's is now */
                } else if (clients[i].state == READY) {
                    int64_t start = now_ns();
                    clients[i].state = RUNNING;
                    start_message(&clients[i], start, start);
                    pump(&clients[i], 0);
                }
        } else if (now >= window_end) {
            break;
        } else {
            /* busy was counted before this round's events: everything has been quiet since. */
            if (hold > 0 && !announced && next_open == nclients && busy == 0) {
                announced = 1;
                printf("{\"held\": %d}\n", alive);
                fflush(stdout);
                /* A regular file or /dev/null cannot be watched (EPERM): then only SECONDS end it. */
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &stdin_tag};
                (void)epoll_ctl(epfd, EPOLL_CTL_ADD, STDIN_FILENO, &ev);
            }
            if (now - last_check >= CHECK_NS) {
                last_check = now;
                for (int i = 0; i < next_open; i++)
                    if ((clients[i].state == RUNNING ||
                         (hold > 0 && (clients[i].state == CONNECTING || clients[i].state == HANDSHAKING))) &&
                        now - clients[i].start_ns > timeout)
                        fail(&clients[i], E_TIMEOUT);
            }
        }
        if (rate > 0)
            send_due(now);
    }
    int64_t stop = now_ns();
    if (hold > 0 && !announced) {
        if (next_open == nclients && alive == 0) {
            printf("{\"held\": 0}\n"); /* every one failed, and is counted */
        } else { /* SECONDS ran out first: whoever is not held yet timed out */
            for (int i = 0; i < next_open; i++)
                if (clients[i].state != WAITING)
                    fail(&clients[i], E_TIMEOUT); /* a no-op for the dead */
            errors[E_TIMEOUT] += (uint64_t)(nclients - next_open);
        }
    }

    double seconds = 0;
    if (started && stop > window_start)
        seconds = (double)((stop < window_end ? stop : window_end) - window_start) / 1e9;
    int failed = 0;
    for (int k = 0; k < E_KINDS; k++)
        failed |= errors[k] != 0;
    printf("{\"clients\": %d, \"seconds\": %.3f, \"round_trips\": %" PRIu64 ", \"round_trips_per_sec\": %.1f, "
           "\"bytes\": %" PRIu64 ", \"mb_per_sec\": %.4f, \"latency_us\": {\"p50\": %" PRId64 ", \"p90\": %" PRId64
           ", \"p99\": %" PRId64 ", \"p999\": %" PRId64 ", \"max\": %" PRId64 "}, \"errors\": {",
           nclients, seconds, counted, seconds > 0 ? (double)counted / seconds : 0.0, bytes,
           seconds > 0 ? (double)bytes / seconds / 1e6 : 0.0, counted ? percentile_us(500) : 0,
           counted ? percentile_us(900) : 0, counted ? percentile_us(990) : 0, counted ? percentile_us(999) : 0,
           max_ns / 1000);
    for (int k = 0; k < E_KINDS; k++)
        printf("%s\"%s\": %" PRIu64, k ? ", " : "", error_names[k], errors[k]);
    printf("}, \"rate\": ");
    if (rate > 0) {
        /* R as given: 15000, not 15000.000000 or 1.5e+04 (the shortest %g that reads back). */
        char text[32];
        if (rate < 1e15 && rate == (double)(int64_t)rate) /* no floor(): no -lm */
            snprintf(text, sizeof text, "%.0f", rate);
        else
            for (int digits = 1; digits <= 17; digits++) {
                snprintf(text, sizeof text, "%.*g", digits, rate);
                if (strtod(text, NULL) == rate)
                    break;
            }
        printf("%s}\n", text);
    } else {
        printf("null}\n");
    }

    for (int i = 0; i < next_open; i++)
        if (clients[i].state != DEAD) {
            SSL_free(clients[i].ssl);
            close(clients[i].fd);
        }
    SSL_CTX_free(ctx);
    freeaddrinfo(addr);
    close(epfd);
    if (timer_fd >= 0)
        close(timer_fd);
    free(heap);
    free(clients);
    free(hist);
    free(pool);
    if (fflush(stdout) != 0)
        return 1;
    return failed ? 1 : 0;
}
