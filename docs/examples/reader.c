/*
 * reader.c - a minimal framebus subscriber written from docs/PROTOCOL.md alone.
 *
 * Build:  gcc -std=c99 -Wall -Werror -O2 -o fbus-reader reader.c
 * Usage:  fbus-reader [-m MAX_PAYLOAD_BYTES] FIFO
 *
 * Opens FIFO for reading (blocking until a writer attaches), reads framebus v1 messages and
 * prints one line per frame to stdout:
 *
 *     camera seq epoch missed format WxH payload_len keyframe
 *
 * e.g. "cam 42 1 2 gray 2x2 4 1" (keyframe is 1 or 0). Camera names are printed as they
 * are (UTF-8); a name containing spaces would make the line ambiguous to split.
 *
 * Exit status: 0 at a clean EOF at a message boundary; 3 on a protocol error or a message
 * truncated by EOF (the partial message is discarded, never printed); 1 on an I/O error;
 * 2 on a usage error. Errors are reported on stderr.
 *
 * Portable C99 plus POSIX open/read/close; no other dependencies. Integers are decoded byte
 * by byte, so the host's byte order and alignment rules do not matter. It reads with a
 * blocking open and exits at EOF; a long-running consumer would instead close and reopen
 * the FIFO after EOF to wait for the next writer (PROTOCOL.md section 10).
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PREFIX_LEN 16u
#define HEADER_V1_LEN 168u
#define MAX_HEADER_LEN 4096u
#define DEFAULT_MAX_PAYLOAD_LEN (256u * 1024u * 1024u)
#define CAMERA_NAME_MAX 64u
#define MAX_PLANES 4u
#define MAX_DIMENSION 32768u

#define EXIT_IO 1
#define EXIT_USAGE 2
#define EXIT_PROTOCOL 3

enum { FMT_BGR24 = 1, FMT_RGB24, FMT_GRAY, FMT_YUV420P, FMT_NV12, FMT_JPEG };

static const char *const format_names[] = {
    NULL, "bgr24", "rgb24", "gray", "yuv420p", "nv12", "jpeg",
};

struct plane {
    uint32_t offset;
    uint32_t stride;
};

struct header {
    char camera[CAMERA_NAME_MAX + 1];
    uint64_t seq, epoch, missed;
    int64_t pts;
    uint32_t tb_num, tb_den;
    int64_t capture_time_ns, publish_mono_ns;
    unsigned format, capture_source, flags, plane_count;
    uint32_t width, height;
    struct plane planes[MAX_PLANES];
};

static const char *program = "reader";

static void die(int status, const char *fmt, ...)
{
    va_list args;
    fprintf(stderr, "%s: ", program);
    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);
    fputc('\n', stderr);
    exit(status);
}

/* ---- little-endian decoding (PROTOCOL.md section 1) ---- */

static uint16_t le16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (unsigned)p[1] << 8);
}

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const unsigned char *p)
{
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static int64_t le64s(const unsigned char *p)
{
    uint64_t u = le64(p);
    /* two's complement without implementation-defined conversion */
    if (u <= (uint64_t)INT64_MAX)
        return (int64_t)u;
    return -(int64_t)(~u) - 1;
}

/* ---- I/O ---- */

/* Read up to len bytes, looping over short reads; return how many arrived before EOF. */
static size_t read_full(int fd, unsigned char *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n > 0) {
            got += (size_t)n;
        } else if (n == 0) {
            break; /* EOF: the writer closed its end */
        } else if (errno != EINTR) {
            die(EXIT_IO, "read failed: %s", strerror(errno));
        }
    }
    return got;
}

static void need(int fd, unsigned char *buf, size_t len, const char *stage)
{
    size_t got = read_full(fd, buf, len);
    if (got < len)
        die(EXIT_PROTOCOL, "truncated message at EOF: %s has %zu of %zu bytes", stage, got, len);
}

/* ---- validation (PROTOCOL.md section 9) ---- */

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. */
static int valid_utf8(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t extra;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            extra = 1, cp = c & 0x1F, min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            extra = 2, cp = c & 0x0F, min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            extra = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (len - i <= extra)
            return 0;
        for (size_t k = 1; k <= extra; k++) {
            unsigned cc = s[i + k];
            if ((cc & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (cc & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += extra + 1;
    }
    return 1;
}

struct plane_shape {
    uint64_t rows, row_bytes;
};

/* The planes a raw format needs (PROTOCOL.md section 5); returns the plane count. */
static unsigned plane_shapes(unsigned format, uint64_t w, uint64_t h, struct plane_shape *out)
{
    uint64_t cw = (w + 1) / 2, ch = (h + 1) / 2;
    switch (format) {
    case FMT_BGR24:
    case FMT_RGB24:
        out[0].rows = h, out[0].row_bytes = 3 * w;
        return 1;
    case FMT_GRAY:
        out[0].rows = h, out[0].row_bytes = w;
        return 1;
    case FMT_YUV420P:
        out[0].rows = h, out[0].row_bytes = w;
        out[1].rows = ch, out[1].row_bytes = cw;
        out[2].rows = ch, out[2].row_bytes = cw;
        return 3;
    case FMT_NV12:
        out[0].rows = h, out[0].row_bytes = w;
        out[1].rows = ch, out[1].row_bytes = 2 * cw;
        return 2;
    default:
        return 0;
    }
}

static void parse_header(const unsigned char *b, uint64_t payload_len, struct header *hd)
{
    /* H1, H2: camera name = 64 bytes minus trailing NULs, non-empty, UTF-8, no inner NUL */
    size_t name_len = CAMERA_NAME_MAX;
    while (name_len > 0 && b[name_len - 1] == 0)
        name_len--;
    if (!valid_utf8(b, name_len))
        die(EXIT_PROTOCOL, "protocol error: camera name is not valid UTF-8");
    if (name_len == 0)
        die(EXIT_PROTOCOL, "protocol error: camera name is empty");
    if (memchr(b, 0, name_len) != NULL)
        die(EXIT_PROTOCOL, "protocol error: camera name contains a NUL byte");
    memcpy(hd->camera, b, name_len);
    hd->camera[name_len] = '\0';

    hd->seq = le64(b + 64);
    hd->epoch = le64(b + 72);
    hd->missed = le64(b + 80);
    hd->pts = le64s(b + 88);
    hd->tb_num = le32(b + 96);
    hd->tb_den = le32(b + 100);
    hd->capture_time_ns = le64s(b + 104);
    hd->publish_mono_ns = le64s(b + 112);
    hd->format = b[120];
    hd->capture_source = b[121];
    hd->flags = le16(b + 122);
    hd->plane_count = le16(b + 124);
    /* b[126..127] reserved: ignored */
    hd->width = le32(b + 128);
    hd->height = le32(b + 132);
    for (unsigned i = 0; i < MAX_PLANES; i++) {
        hd->planes[i].offset = le32(b + 136 + 8 * i);
        hd->planes[i].stride = le32(b + 140 + 8 * i);
    }
    /* bytes 168..header_len-1 belong to later minor revisions: skipped by the caller */

    if (hd->format < FMT_BGR24 || hd->format > FMT_JPEG) /* H3 */
        die(EXIT_PROTOCOL, "protocol error: unknown pixel format code %u", hd->format);
    if (hd->capture_source > 1) /* H4 */
        die(EXIT_PROTOCOL, "protocol error: unknown capture time source %u", hd->capture_source);
    if (hd->width < 1 || hd->width > MAX_DIMENSION || hd->height < 1 ||
        hd->height > MAX_DIMENSION) /* H5 */
        die(EXIT_PROTOCOL, "protocol error: frame size %" PRIu32 "x%" PRIu32 " outside 1..%u",
            hd->width, hd->height, MAX_DIMENSION);
    if (hd->plane_count > MAX_PLANES) /* H6 */
        die(EXIT_PROTOCOL, "protocol error: plane count %u over %u", hd->plane_count,
            MAX_PLANES);

    if (hd->format == FMT_JPEG) { /* H7 */
        if (hd->plane_count != 1 || hd->planes[0].offset != 0 || payload_len == 0)
            die(EXIT_PROTOCOL,
                "protocol error: jpeg message must have one plane at offset 0 and a payload");
        return;
    }
    struct plane_shape shapes[MAX_PLANES];
    unsigned wanted = plane_shapes(hd->format, hd->width, hd->height, shapes);
    if (hd->plane_count != wanted) /* H7 */
        die(EXIT_PROTOCOL, "protocol error: %s needs %u planes, header has %u",
            format_names[hd->format], wanted, hd->plane_count);
    for (unsigned i = 0; i < wanted; i++) { /* H8: every value < 2^48, no overflow */
        uint64_t stride = hd->planes[i].stride;
        if (stride < shapes[i].row_bytes)
            die(EXIT_PROTOCOL, "protocol error: plane %u: stride %" PRIu64 " < row size %" PRIu64,
                i, stride, shapes[i].row_bytes);
        uint64_t end = hd->planes[i].offset + stride * (shapes[i].rows - 1) + shapes[i].row_bytes;
        if (end > payload_len)
            die(EXIT_PROTOCOL,
                "protocol error: plane %u ends at byte %" PRIu64 ", past payload %" PRIu64, i,
                end, payload_len);
    }
}

/* ---- main loop (PROTOCOL.md section 10, "Reading algorithm") ---- */

static uint64_t parse_limit(const char *text)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || *end != '\0' || text[0] == '-' || v > SIZE_MAX)
        die(EXIT_USAGE, "bad payload limit %s", text);
    return (uint64_t)v;
}

int main(int argc, char **argv)
{
    uint64_t max_payload_len = DEFAULT_MAX_PAYLOAD_LEN;
    const char *path = NULL;
    int bad_usage = 0;

    if (argc > 0 && argv[0][0] != '\0')
        program = argv[0];
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-m") == 0 && i + 1 < argc)
            max_payload_len = parse_limit(argv[++i]);
        else if (path == NULL && argv[i][0] != '-')
            path = argv[i];
        else
            bad_usage = 1;
    }
    if (path == NULL || bad_usage) {
        fprintf(stderr, "usage: %s [-m MAX_PAYLOAD_BYTES] FIFO\n", program);
        return EXIT_USAGE;
    }

    int fd;
    do /* blocks until a writer opens the FIFO */
        fd = open(path, O_RDONLY);
    while (fd < 0 && errno == EINTR);
    if (fd < 0)
        die(EXIT_IO, "cannot open %s: %s", path, strerror(errno));

    unsigned char prefix[PREFIX_LEN];
    static unsigned char header_buf[MAX_HEADER_LEN];
    unsigned char *payload = NULL;
    size_t payload_cap = 0;

    for (;;) {
        size_t got = read_full(fd, prefix, PREFIX_LEN);
        if (got == 0)
            break; /* clean EOF at a message boundary */
        if (got < PREFIX_LEN)
            die(EXIT_PROTOCOL, "truncated message at EOF: prefix has %zu of %u bytes", got,
                PREFIX_LEN);

        /* P1..P5 */
        if (memcmp(prefix, "FBUS", 4) != 0)
            die(EXIT_PROTOCOL, "protocol error: bad magic %02x %02x %02x %02x "
                "(expected 46 42 55 53 \"FBUS\"): not at a message",
                prefix[0], prefix[1], prefix[2], prefix[3]);
        unsigned version = le16(prefix + 4);
        unsigned header_len = le16(prefix + 6);
        uint64_t payload_len = le64(prefix + 8);
        if (version != 1)
            die(EXIT_PROTOCOL, "protocol error: unsupported protocol version %u "
                "(this reader speaks 1)", version);
        if (header_len < HEADER_V1_LEN)
            die(EXIT_PROTOCOL, "protocol error: header length %u is shorter than v1's %u",
                header_len, HEADER_V1_LEN);
        if (header_len > MAX_HEADER_LEN)
            die(EXIT_PROTOCOL, "protocol error: header length %u over the limit of %u",
                header_len, MAX_HEADER_LEN);
        if (payload_len > max_payload_len)
            die(EXIT_PROTOCOL, "protocol error: payload length %" PRIu64
                " over the limit of %" PRIu64, payload_len, max_payload_len);

        /* whole header, including appended fields this reader does not know */
        need(fd, header_buf, header_len, "header");
        struct header hd;
        parse_header(header_buf, payload_len, &hd);

        /* only now, with every length validated, make room for the payload */
        if (payload_len > payload_cap) {
            unsigned char *grown = realloc(payload, (size_t)payload_len);
            if (grown == NULL)
                die(EXIT_IO, "out of memory for a %" PRIu64 "-byte payload", payload_len);
            payload = grown;
            payload_cap = (size_t)payload_len;
        }
        need(fd, payload, (size_t)payload_len, "payload");

        printf("%s %" PRIu64 " %" PRIu64 " %" PRIu64 " %s %" PRIu32 "x%" PRIu32 " %" PRIu64 " %d\n",
               hd.camera, hd.seq, hd.epoch, hd.missed, format_names[hd.format], hd.width,
               hd.height, payload_len, (hd.flags & 1u) ? 1 : 0);
        if (fflush(stdout) != 0)
            die(EXIT_IO, "cannot write to stdout: %s", strerror(errno));
    }
    free(payload);
    close(fd);
    return 0;
}
