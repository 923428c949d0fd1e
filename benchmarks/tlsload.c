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
 *
 * All clients connect and handshake at once; when every one is done, each runs a closed
 * loop (send one message, read its echo, compare, next).  Round trips that complete in
 * [warmup end, warmup end + duration] are counted and one JSON line goes to stdout.
 * Exit status: 0 ok, 1 if any client failed (see "errors"), 2 for a bad command line.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
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
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

enum { E_CONNECT, E_HANDSHAKE, E_CLOSED, E_MISMATCH, E_TIMEOUT, E_IO, E_KINDS };
static const char *const error_names[E_KINDS] = {"connect", "handshake", "closed", "mismatch", "timeout", "io"};

enum state { CONNECTING, HANDSHAKING, READY, RUNNING, DEAD };

struct client {
    int fd;
    SSL *ssl;
    enum state state;
    uint32_t events;              /* what epoll watches now: skips redundant epoll_ctl calls */
    uint32_t write_wants, read_wants; /* EPOLLIN/EPOLLOUT a blocked SSL_write/SSL_read waits for */
    const unsigned char *msg;
    size_t len, sent, received;
    int64_t start_ns;
    uint64_t done; /* completed round trips (a TLS 1.3 client learns its certificate was refused only then) */
};

#define HIST_US 1000000 /* 1-us buckets up to 1 s: exact percentiles at a few MB of memory */
#define CHUNK 16384     /* one TLS record per SSL_write, so big messages interleave with reads */
#define MAX_SIZE (64u << 20)
#define CHECK_NS 10000000 /* look for timed-out round trips every 10 ms, not on every event */

static struct client *clients;
static int nclients = 64, epfd = -1;
static size_t min_size = 1, max_size = 100;
static unsigned char *pool;
static size_t pool_len;
static uint64_t rng_state = 1;
static uint64_t *hist, overflow, counted, bytes, errors[E_KINDS];
static int64_t max_ns, window_start = INT64_MAX, window_end = INT64_MAX;
static int alive;

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

static void handshake(struct client *c) {
    int r = SSL_connect(c->ssl);
    uint32_t wants;
    if (r == 1) {
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

static void start_message(struct client *c) {
    c->len = min_size + (size_t)(rng_next() % (max_size - min_size + 1));
    c->msg = pool + rng_next() % (pool_len - c->len + 1);
    c->sent = c->received = 0;
    c->write_wants = c->read_wants = 0;
    c->start_ns = now_ns();
}

static void record(struct client *c, int64_t t) {
    c->done++;
    if (t < window_start || t > window_end)
        return;
    int64_t ns = t - c->start_ns;
    if (ns / 1000 < HIST_US)
        hist[ns / 1000]++;
    else
        overflow++;
    if (ns > max_ns)
        max_ns = ns;
    counted++;
    bytes += c->len;
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
            record(c, now_ns());
            start_message(c);
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

static void open_client(struct client *c, SSL_CTX *ctx, const struct addrinfo *ai, const char *name) {
    c->state = CONNECTING;
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

/* The smallest latency that at least permille/1000 of the round trips did not exceed. */
static int64_t percentile_us(uint64_t permille) {
    uint64_t rank = (counted * permille + 999) / 1000, seen = 0;
    for (int us = 0; us < HIST_US; us++)
        if ((seen += hist[us]) >= rank)
            return us;
    return max_ns / 1000; /* in the overflow: the max is the best bound we have */
}

int main(int argc, char **argv) {
    const char *connect_to = NULL, *ca = NULL, *cert = NULL, *key = NULL, *name = "localhost";
    int64_t duration = 4000000000, warmup = 1000000000, timeout = 10000000000;
    static const char *const flags[] = {"--connect", "--ca", "--cert", "--key", "--servername", "--clients",
                                        "--size", "--duration", "--warmup", "--seed", "--timeout"};
    for (int i = 1; i < argc; i += 2) {
        const char *flag = argv[i], *value = argv[i + 1]; /* argv[argc] is NULL */
        int f = 0, nflags = (int)(sizeof flags / sizeof *flags);
        while (f < nflags && strcmp(flag, flags[f]) != 0)
            f++;
        if (f == nflags)
            usage_error("unknown flag '%s'", flag);
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
        default: timeout = parse_seconds(flag, value, 0); break;
        }
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
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* One read() per record instead of two (header, then body).  Read-ahead can leave data
     * in OpenSSL where epoll cannot see it, but we only stop reading once a message's echo
     * is complete, and the server has nothing more to send until the next one. */
    SSL_CTX_set_read_ahead(ctx, 1);

    /* One pool, random offsets into it: messages differ without generating bytes per message. */
    pool_len = max_size + 65536;
    pool = malloc(pool_len);
    hist = calloc(HIST_US, sizeof *hist);
    clients = calloc((size_t)nclients, sizeof *clients);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    /* A server that resets us mid-write would otherwise kill us with SIGPIPE. */
    if (pool == NULL || hist == NULL || clients == NULL || epfd < 0 || signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
        fputs("tlsload: error: out of memory or file descriptors\n", stderr);
        return 2;
    }
    for (size_t i = 0; i < pool_len; i += 8) {
        uint64_t r = rng_next();
        memcpy(pool + i, &r, pool_len - i < 8 ? pool_len - i : 8);
    }

    int64_t connect_deadline = now_ns() + timeout, last_check = 0;
    for (int i = 0; i < nclients; i++)
        open_client(&clients[i], ctx, addr, name);

    struct epoll_event events[256];
    int started = 0;
    while (alive > 0) {
        int n = epoll_wait(epfd, events, 256, 10);
        if (n < 0 && errno != EINTR) {
            for (int i = 0; i < nclients; i++)
                fail(&clients[i], E_IO);
            break;
        }
        for (int i = 0; i < n; i++) {
            struct client *c = events[i].data.ptr;
            switch (c->state) {
            case CONNECTING: finish_connect(c); break;
            case HANDSHAKING: handshake(c); break;
            case READY: /* it has nothing to say yet: only a hang-up wakes us here */
                if (events[i].events & (EPOLLERR | EPOLLHUP))
                    fail(c, E_CLOSED);
                break;
            case RUNNING: pump(c, events[i].events); break;
            case DEAD: break;
            }
        }
        int64_t now = now_ns();
        if (!started) {
            int pending = 0;
            for (int i = 0; i < nclients; i++)
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
            for (int i = 0; i < nclients; i++)
                if (clients[i].state == READY) {
                    clients[i].state = RUNNING;
                    start_message(&clients[i]);
                    pump(&clients[i], 0);
                }
        } else if (now >= window_end) {
            break;
        } else if (now - last_check >= CHECK_NS) {
            last_check = now;
            for (int i = 0; i < nclients; i++)
                if (clients[i].state == RUNNING && now - clients[i].start_ns > timeout)
                    fail(&clients[i], E_TIMEOUT);
        }
    }
    int64_t stop = now_ns();

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
    printf("}}\n");

    for (int i = 0; i < nclients; i++)
        if (clients[i].state != DEAD) {
            SSL_free(clients[i].ssl);
            close(clients[i].fd);
        }
    SSL_CTX_free(ctx);
    freeaddrinfo(addr);
    close(epfd);
    free(clients);
    free(hist);
    free(pool);
    if (fflush(stdout) != 0)
        return 1;
    return failed ? 1 : 0;
}
