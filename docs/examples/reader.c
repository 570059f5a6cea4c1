/*
 * reader.c - a minimal framebus subscriber written from docs/PROTOCOL.md alone.
 * It implements protocol version 1, revision 1.2: FIFO messages (revision 1.0), shared-memory
 * payloads (revision 1.1, section 12), and revision 1.2's instance (restart detection,
 * section 8), STATE messages (section 13), read-ahead rules R1/R2 (section 2) and shm segment
 * directory and lifetime rules (section 12).
 *
 * Build:  gcc -std=c99 -Wall -Wextra -Werror -O2 -o fbus-reader reader.c
 * Usage:  fbus-reader [-c] [-l] [-r] [-s] [-n COUNT] [-m MAX_PAYLOAD_BYTES] FIFO
 *
 * Opens FIFO for reading, reads framebus v1 messages and prints one line per message to stdout.
 * A frame:
 *
 *     camera seq epoch missed format WxH payload_len keyframe
 *
 * e.g. "cam 42 1 2 gray 2x2 4 1" (keyframe is 1 or 0). Camera names are printed as they
 * are (UTF-8); a name containing spaces would make the line ambiguous to split. For an shm
 * message, payload_len is the payload's length in the segment (shm_length), so the line is
 * the same whichever transport carried the frame.
 *
 * A STATE message (flag bit 2, section 13; not a frame, not counted by -n):
 *
 *     state camera name epoch E seq S reason
 *
 * e.g. "state cam reconnecting epoch 1 seq 42 connection refused"; name is streaming,
 * reconnecting, down, idle or unknown(N) for codes 5..255; the reason (possibly empty, then
 * the line ends after S) has control characters, DEL and backslash written as \xHH so the line
 * stays one line. STATE messages are validated by H1, H2 and T1..T4 (T4's UTF-8 check of the
 * reason once the payload is in); their seq takes no part in the seq arithmetic.
 *
 * A restart (section 8): the reader keeps the instance of the last message read since it
 * opened the FIFO; when a message's instance differs (0 against non-0 included), it prints
 *
 *     restart OLD NEW
 *
 * (both as 16 hex digits) before that message's own line, forgets every camera's last seq and
 * epoch and unmaps every segment. The first message after an open is compared with nothing.
 *
 * -s checks seq continuity (section 8): for two consecutive frame messages of a camera with
 * the same instance, read from one open of the FIFO, seq == previous seq + 1 + missed (u64);
 * a frame that breaks it gets a line before its own:
 *
 *     seq-error camera SEQ after PREVIOUS missed MISSED
 *
 * Stale shm frames count as received (their seq is the next one's previous); STATE messages
 * do not.
 *
 * -c appends a checksum of the frame's pixel data to each line: " %08x", the CRC-32 (the
 * zlib/IEEE 802.3 one) of every row's pixel bytes, plane by plane in plane order, row by row,
 * as addressed through the header's plane offsets and strides (section 5). Row padding and
 * bytes no plane covers are not included. For jpeg it is the CRC-32 of the whole payload.
 *
 * Reading (rules R1 and R2, section 2): at a message boundary, with no byte of the next
 * message read yet, the reader asks for 4096 bytes in one read() and keeps the bytes past the
 * end of the message for the messages that follow (an shm message, 256 bytes, written with
 * one write(), so arrives with one read()); once it has part of a message it never asks for
 * more than the rest of that message. With the writer's promise (at most one unread message in
 * an shm stream's pipe) this keeps the hold rule: the reader is done with a payload before it
 * next reads from the FIFO, and a read never starts a message while a payload is in use.
 *
 * Shared memory (section 12). An shm message (flag bit 1) carries no payload in the stream;
 * it names a segment file (the name ends at the first NUL of its 32-byte field) in the
 * directory of the FIFO as the daemon created it: dirname(realpath(FIFO)), resolved at every
 * open. After rules S1..S7 and H7/H8 (against shm_length), the segment is opened with
 * O_RDONLY | O_NOFOLLOW | O_NONBLOCK and mapped PROT_READ, MAP_SHARED. Each camera keeps one
 * mapping, reused while its messages name the same segment; when a camera's message names
 * another segment, the old one is unmapped (the previous frame is done by then), and every
 * mapping goes at a restart and at every reopen. M1 (segment file) and M2 (payload inside it,
 * checked in its overflow-free form) are protocol errors. A frame whose segment file does not
 * exist (M0) or whose slot stamp does not name it (M3) is stale: it is skipped (no line),
 * counted, and reading goes on; with -c the stamp is checked again after the checksum, and a
 * frame whose slot changed meanwhile is skipped and counted the same way. At a clean EOF, if
 * any frames were stale, one line goes to stderr: "PROGRAM: skipped N stale shm frame(s)".
 *
 * Exit status: 0 at a clean EOF at a message boundary (stale frames included) or after
 * -n COUNT frames; 3 on a protocol error or a message truncated by EOF (the partial message is
 * discarded, never printed); 1 on an I/O error (including a segment that opens but cannot be
 * mapped); 2 on a usage error. Errors are reported on stderr.
 *
 * Opening (PROTOCOL.md section 10): the FIFO is opened O_NONBLOCK (an open never blocks)
 * and polled for a writer in 500 ms slices; between slices the reader checks that the path
 * still names the FIFO it holds (same st_dev and st_ino) and reopens it when not, so a
 * daemon restart that deletes and recreates fifo_dir never leaves it waiting on a deleted
 * inode. Once a writer is there, reads block.
 *
 * -l appends " LATENCY_NS" to each frame line: CLOCK_MONOTONIC when the frame was ready here
 * minus the header's publish_mono_ns (same host only; after the checksum when both are given).
 *
 * -r reopens after each EOF (a daemon stop or restart) instead of exiting; a message cut by
 * that EOF is discarded with a line on stderr ("PROGRAM: truncated message at EOF: ...,
 * discarded"). A reopen forgets everything about the stream: the last instance, every camera's
 * seq and epoch, every mapping. -n COUNT exits 0 after COUNT frames (STATE messages and
 * stale frames are not frames).
 *
 * Portable C99 plus POSIX open/read/close/fstat/stat/poll/mmap/realpath; no other
 * dependencies. Integers are decoded byte by byte, in the stream and in the segment, so the
 * host's byte order and alignment rules do not matter.
 */
#define _XOPEN_SOURCE 700 /* POSIX.1-2008 with XSI: realpath */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PREFIX_LEN 16u
#define HEADER_V1_LEN 168u
#define HEADER_SHM_LEN 224u
#define INSTANCE_END 232u     /* a header this long carries instance (1.2) */
#define HEADER_V12_LEN 240u   /* ... and this long the state byte: every 1.2 header */
#define BOUNDARY_READ 4096u   /* asked for at a message boundary (rule R1) */
#define MAX_HEADER_LEN 4096u
#define DEFAULT_MAX_PAYLOAD_LEN (256u * 1024u * 1024u)
#define CAMERA_NAME_MAX 64u
#define MAX_PLANES 4u
#define MAX_DIMENSION 32768u

#define FLAG_KEYFRAME 0x0001u
#define FLAG_SHM 0x0002u
#define FLAG_STATE 0x0004u
#define STATE_REASON_MAX 256u
#define SHM_NAME_LEN 32u      /* shm_segment field: ASCII, NUL-padded */
#define SHM_ALIGN 64u         /* shm_offset: a multiple of 64, >= 64; the stamp precedes it */
#define SEGMENT_MIN_LEN 4096u /* page 0: the segment header */
#define STAMP_LEN 32u         /* bytes of the 64-byte stamp that carry fields */

#define EXIT_IO 1
#define EXIT_USAGE 2
#define EXIT_PROTOCOL 3

enum { FMT_BGR24 = 1, FMT_RGB24, FMT_GRAY, FMT_YUV420P, FMT_NV12, FMT_JPEG };

static const char *const format_names[] = {
    NULL, "bgr24", "rgb24", "gray", "yuv420p", "nv12", "jpeg",
};

static const char *const state_names[] = {
    NULL, "streaming", "reconnecting", "down", "idle",
};

struct plane {
    uint32_t offset;
    uint32_t stride;
};

struct shm_location {
    char segment[SHM_NAME_LEN + 1];
    uint64_t offset, length, token;
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
    int shm;                 /* flag bit 1: the payload is in a segment (section 12) */
    struct shm_location loc; /* valid when shm */
    int is_state;            /* flag bit 2: a STATE message (section 13), not a frame */
    uint64_t instance;       /* 1.2: the writing daemon process; 0 from an older writer */
    unsigned state;          /* 1.2: the state code of a STATE message */
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

/* One read() (retried on EINTR); returns 0 at EOF. */
static size_t read_some(int fd, unsigned char *buf, size_t len)
{
    for (;;) {
        ssize_t n = read(fd, buf, len);
        if (n >= 0)
            return (size_t)n;
        if (errno != EINTR)
            die(EXIT_IO, "read failed: %s", strerror(errno));
    }
}

/* Bytes read at a message boundary and not used yet (rule R1): the surplus of a boundary
 * read, kept for the messages that follow. */
static unsigned char boundary[BOUNDARY_READ];
static size_t pending_at, pending_len;

/* R1: at a message boundary with nothing buffered, ask for BOUNDARY_READ bytes in one read.
 * Returns 0 at EOF (a clean end: no byte of a message was read). */
static size_t boundary_read(int fd)
{
    pending_at = 0;
    pending_len = read_some(fd, boundary, sizeof boundary);
    return pending_len;
}

/* The next len bytes of the current message into buf: the buffered surplus first, then reads
 * that never ask for more than the rest of len (R2: nothing past this part of this message).
 * Returns how many arrived before EOF. */
static size_t take(int fd, unsigned char *buf, size_t len)
{
    if (len == 0)
        return 0; /* buf may be NULL then (no payload buffer yet) */
    size_t got = len < pending_len ? len : pending_len;
    memcpy(buf, boundary + pending_at, got);
    pending_at += got;
    pending_len -= got;
    while (got < len) {
        size_t n = read_some(fd, buf + got, len - got);
        if (n == 0)
            break; /* EOF: the writer closed its end */
        got += n;
    }
    return got;
}

static int set_segment_dir(const char *fifo_path);

/* Open the FIFO and wait for a writer without ever waiting on a FIFO the path no longer
 * names (section 10). Returns a blocking descriptor with a writer attached or data waiting. */
static int open_and_wait(const char *path)
{
    const struct timespec appear_poll = {0, 50 * 1000 * 1000};
    for (;;) {
        int fd = open(path, O_RDONLY | O_NONBLOCK);
        if (fd < 0) {
            if (errno != ENOENT && errno != EINTR)
                die(EXIT_IO, "cannot open %s: %s", path, strerror(errno));
            nanosleep(&appear_poll, NULL); /* not there (yet): a daemon is starting */
            continue;
        }
        struct stat held;
        if (fstat(fd, &held) != 0)
            die(EXIT_IO, "cannot stat %s: %s", path, strerror(errno));
        if (!S_ISFIFO(held.st_mode))
            die(EXIT_IO, "%s is not a FIFO", path);
        if (!set_segment_dir(path)) { /* gone again at once: start over */
            close(fd);
            continue;
        }
        for (;;) {
            struct pollfd waiting = {fd, POLLIN, 0};
            int ready = poll(&waiting, 1, 500);
            if (ready < 0 && errno != EINTR)
                die(EXIT_IO, "poll failed: %s", strerror(errno));
            if (ready > 0) { /* POLLIN, or POLLHUP: a writer came (and maybe went) */
                int flags = fcntl(fd, F_GETFL);
                if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0)
                    die(EXIT_IO, "cannot make %s blocking: %s", path, strerror(errno));
                return fd;
            }
            struct stat now;
            if (stat(path, &now) != 0 || now.st_dev != held.st_dev || now.st_ino != held.st_ino)
                break; /* replaced or gone: this inode will never get a writer again */
        }
        close(fd);
    }
}

/* ---- validation (PROTOCOL.md sections 9 and 12) ---- */

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

/* Count the ASCII digits at s[*i..len), advancing *i past them. */
static size_t digits(const unsigned char *s, size_t len, size_t *i)
{
    size_t start = *i;
    while (*i < len && s[*i] >= '0' && s[*i] <= '9')
        (*i)++;
    return *i - start;
}

/* S4: the name matches fbshm-[0-9]{1,10}-[0-9]{1,15} (so no '/', no ".."; at most 32 bytes). */
static int valid_segment_name(const unsigned char *s, size_t len)
{
    size_t i = 6, n;
    if (len < 6 || memcmp(s, "fbshm-", 6) != 0)
        return 0;
    n = digits(s, len, &i);
    if (n < 1 || n > 10 || i >= len || s[i] != '-')
        return 0;
    i++;
    n = digits(s, len, &i);
    return n >= 1 && n <= 15 && i == len;
}

/* A name from the wire, quoted for an error message: printable ASCII as is, others \xHH. */
static const char *quoted(const unsigned char *s, size_t len)
{
    static char out[4 * SHM_NAME_LEN + 1];
    size_t o = 0;
    for (size_t i = 0; i < len && i < SHM_NAME_LEN; i++) {
        if (s[i] >= 0x20 && s[i] < 0x7F && s[i] != '\\' && s[i] != '\'')
            out[o++] = (char)s[i];
        else
            o += (size_t)snprintf(out + o, sizeof out - o, "\\x%02x", s[i]);
    }
    out[o] = '\0';
    return out;
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

/* S1..S6 (section 12): the appended fields of a message with flag bit 1 (S7 follows). */
static void parse_shm(const unsigned char *b, unsigned header_len, uint64_t payload_len,
                      uint64_t max_payload_len, struct shm_location *loc)
{
    if (header_len < HEADER_SHM_LEN) /* S1 */
        die(EXIT_PROTOCOL, "protocol error: shm message needs header length >= %u, got %u",
            HEADER_SHM_LEN, header_len);
    if (payload_len != 0) /* S2 */
        die(EXIT_PROTOCOL, "protocol error: shm message must have payload length 0, got %"
            PRIu64, payload_len);
    /* the name is the bytes before the first NUL (all 32 if none); the rest is ignored */
    const unsigned char *name = b + HEADER_V1_LEN;
    const unsigned char *nul = memchr(name, 0, SHM_NAME_LEN);
    size_t name_len = nul == NULL ? SHM_NAME_LEN : (size_t)(nul - name);
    loc->offset = le64(b + 200);
    loc->length = le64(b + 208);
    loc->token = le64(b + 216);
    if (loc->length > max_payload_len) /* S3 */
        die(EXIT_PROTOCOL, "protocol error: shm payload length %" PRIu64
            " over the limit of %" PRIu64, loc->length, max_payload_len);
    if (!valid_segment_name(name, name_len)) /* S4 */
        die(EXIT_PROTOCOL, "protocol error: bad shm segment name '%s'", quoted(name, name_len));
    memcpy(loc->segment, name, name_len);
    loc->segment[name_len] = '\0';
    if (loc->offset < SHM_ALIGN || loc->offset % SHM_ALIGN != 0) /* S5 */
        die(EXIT_PROTOCOL, "protocol error: shm offset %" PRIu64
            " is not a multiple of %u from %u", loc->offset, SHM_ALIGN, SHM_ALIGN);
    if (loc->length == 0 || loc->token == 0) /* S6 */
        die(EXIT_PROTOCOL, "protocol error: shm message with zero length or zero token");
}

static void parse_header(const unsigned char *b, unsigned header_len, uint64_t payload_len,
                         uint64_t max_payload_len, struct header *hd)
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
    /* bytes 168..223: revision 1.1's shm fields, read below when flag bit 1 is set and
     * ignored otherwise; instance and state (1.2) only where the header reaches them;
     * 233..239 and fields of later minor revisions: ignored */
    hd->instance = header_len >= INSTANCE_END ? le64(b + 224) : 0;
    hd->state = header_len >= HEADER_V12_LEN ? b[232] : 0;
    hd->shm = 0;

    hd->is_state = (hd->flags & FLAG_STATE) != 0;
    if (hd->is_state) { /* T1..T4 instead of H3..H8; T4's UTF-8 check waits for the payload */
        unsigned frame_flags = hd->flags & (FLAG_KEYFRAME | FLAG_SHM);
        if (header_len < HEADER_V12_LEN) /* T1 */
            die(EXIT_PROTOCOL, "protocol error: state message needs header length >= %u, "
                "got %u", HEADER_V12_LEN, header_len);
        if (frame_flags != 0) /* T2 */
            die(EXIT_PROTOCOL, "protocol error: state message with frame flags 0x%x",
                frame_flags);
        if (hd->format != 0 || hd->width != 0 || hd->height != 0 || hd->plane_count != 0)
            die(EXIT_PROTOCOL, "protocol error: state message with a frame shape"); /* T3 */
        if (payload_len > STATE_REASON_MAX) /* T4 */
            die(EXIT_PROTOCOL, "protocol error: state reason of %" PRIu64 " bytes over %u",
                payload_len, STATE_REASON_MAX);
        if (hd->state == 0) /* T4 */
            die(EXIT_PROTOCOL, "protocol error: state message with state code 0");
        return;
    }

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

    /* S1..S6; the layout is then checked against shm_length instead of payload_len */
    hd->shm = (hd->flags & FLAG_SHM) != 0;
    uint64_t layout_len = payload_len;
    if (hd->shm) {
        parse_shm(b, header_len, payload_len, max_payload_len, &hd->loc);
        if (hd->format == FMT_JPEG) /* S7 */
            die(EXIT_PROTOCOL, "protocol error: jpeg is not sent over shm");
        layout_len = hd->loc.length;
    }

    if (hd->format == FMT_JPEG) { /* H7 */
        if (hd->plane_count != 1 || hd->planes[0].offset != 0 || layout_len == 0)
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
        if (end > layout_len)
            die(EXIT_PROTOCOL,
                "protocol error: plane %u ends at byte %" PRIu64 ", past payload %" PRIu64, i,
                end, layout_len);
    }
}

/* ---- shared-memory segments (PROTOCOL.md section 12) ---- */

/* What the reader knows per camera of this stream (section 8): the last frame's seq and
 * epoch, and the one segment mapping the camera keeps (section 12). Void after a restart or a
 * reopen. */
struct camera_state {
    char name[CAMERA_NAME_MAX + 1];
    int has_seq;
    uint64_t last_seq, last_epoch;
    char segment[SHM_NAME_LEN + 1]; /* the mapped segment's name; base NULL: none mapped */
    const unsigned char *base;
    size_t size;
};

static struct camera_state *cameras;
static size_t camera_count, camera_cap;
static char *segment_path; /* the segments' directory, then room for a segment name */
static size_t segment_dir_len;

static void unmap_camera(struct camera_state *cam)
{
    if (cam->base != NULL)
        munmap((void *)cam->base, cam->size);
    cam->base = NULL;
    cam->segment[0] = '\0';
}

/* Forget all per-camera state and unmap every segment (a restart or a reopen). */
static void forget_cameras(void)
{
    for (size_t i = 0; i < camera_count; i++)
        unmap_camera(&cameras[i]);
    camera_count = 0;
}

/* The camera's state, made (empty) at its first message; names compare byte for byte. */
static struct camera_state *camera_for(const char *name)
{
    for (size_t i = 0; i < camera_count; i++)
        if (strcmp(cameras[i].name, name) == 0)
            return &cameras[i];
    if (camera_count == camera_cap) {
        size_t cap = camera_cap == 0 ? 8 : 2 * camera_cap;
        struct camera_state *grown = realloc(cameras, cap * sizeof *grown);
        if (grown == NULL)
            die(EXIT_IO, "out of memory");
        cameras = grown;
        camera_cap = cap;
    }
    struct camera_state *cam = &cameras[camera_count++];
    memset(cam, 0, sizeof *cam);
    memcpy(cam->name, name, strlen(name) + 1);
    return cam;
}

/* Segments live in the directory that holds the FIFO as the daemon created it:
 * dirname(realpath(path)), resolved when the FIFO is opened (section 12). Returns 0 if the
 * path no longer resolves (it went away after the open). */
static int set_segment_dir(const char *fifo_path)
{
    char *resolved = realpath(fifo_path, NULL);
    if (resolved == NULL) {
        if (errno == ENOENT || errno == ENOTDIR)
            return 0;
        die(EXIT_IO, "cannot resolve %s: %s", fifo_path, strerror(errno));
    }
    const char *slash = strrchr(resolved, '/'); /* an absolute path: there is one */
    size_t dir_len = slash == NULL ? 0 : (size_t)(slash - resolved) + 1;
    char *path = malloc(dir_len + SHM_NAME_LEN + 1);
    if (path == NULL)
        die(EXIT_IO, "out of memory");
    memcpy(path, resolved, dir_len);
    path[dir_len] = '\0';
    free(resolved);
    free(segment_path);
    segment_path = path;
    segment_dir_len = dir_len;
    return 1;
}

/* M1: open and map a segment read-only into cam; check its size, magic and version. Returns
 * 0 if the file does not exist (M0: its daemon died and the next one removed it; the frame is
 * stale). */
static int map_segment(struct camera_state *cam, const char *name)
{
    memcpy(segment_path + segment_dir_len, name, strlen(name) + 1);
    int fd;
    do /* O_NONBLOCK: a FIFO planted under a segment's name must not block the open */
        fd = open(segment_path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    if (fd < 0 && errno == ENOENT)
        return 0;
    if (fd < 0)
        die(EXIT_PROTOCOL, "protocol error: shm segment %s: cannot open: %s", segment_path,
            strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0)
        die(EXIT_IO, "shm segment %s: cannot stat: %s", segment_path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        die(EXIT_PROTOCOL, "protocol error: shm segment %s: not a regular file", segment_path);
    if (st.st_size < (off_t)SEGMENT_MIN_LEN)
        die(EXIT_PROTOCOL, "protocol error: shm segment %s: %jd bytes, not a segment",
            segment_path, (intmax_t)st.st_size);
    if ((uintmax_t)st.st_size > SIZE_MAX)
        die(EXIT_PROTOCOL, "protocol error: shm segment %s: %jd bytes, too large to map",
            segment_path, (intmax_t)st.st_size);
    size_t size = (size_t)st.st_size;
    void *mapped = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (mapped == MAP_FAILED)
        die(EXIT_IO, "shm segment %s: cannot map %zu bytes: %s", segment_path, size,
            strerror(errno));
    close(fd); /* the mapping stays valid, even once the daemon unlinks the file */
    const unsigned char *base = mapped;
    if (memcmp(base, "FBSM", 4) != 0 || le32(base + 4) != 1)
        die(EXIT_PROTOCOL, "protocol error: shm segment %s: bad magic %02x %02x %02x %02x "
            "or version %" PRIu32 " (expected \"FBSM\" version 1)", segment_path, base[0],
            base[1], base[2], base[3], le32(base + 4));
    memcpy(cam->segment, name, strlen(name) + 1);
    cam->base = base;
    cam->size = size;
    return 1;
}

/* The camera's mapping of the message's segment, with M2 checked: reused while the camera's
 * messages name the same segment; a message naming another one unmaps the old (the previous
 * frame is done: the reader is past it) and maps the new. 0 if the segment is gone (M0). */
static int segment_for(struct camera_state *cam, const struct shm_location *loc)
{
    if (cam->base == NULL || strcmp(cam->segment, loc->segment) != 0) {
        unmap_camera(cam);
        if (!map_segment(cam, loc->segment))
            return 0;
    }
    /* M2 in its overflow-free form: never compute shm_offset + shm_length */
    if (!(loc->length <= cam->size && loc->offset <= cam->size - loc->length))
        die(EXIT_PROTOCOL, "protocol error: shm payload %" PRIu64 "+%" PRIu64
            " past the end of segment %s (%zu bytes)", loc->offset, loc->length, loc->segment,
            cam->size);
    return 1;
}

/* M3: the slot's stamp (64 bytes before the payload) names this write of this frame. */
static int stamp_matches(const struct camera_state *cam, const struct shm_location *loc,
                         uint64_t seq)
{
    /* read the stamp afresh from the shared page each time (volatile: no cached copy) */
    const volatile unsigned char *at = cam->base + (loc->offset - SHM_ALIGN);
    unsigned char stamp[STAMP_LEN];
    for (unsigned i = 0; i < STAMP_LEN; i++)
        stamp[i] = at[i];
    return memcmp(stamp, "FBSL", 4) == 0 && le64(stamp + 8) == loc->token &&
           le64(stamp + 16) == seq && le64(stamp + 24) == loc->length;
}

/* ---- the -c checksum: CRC-32 (zlib's) of the pixel data, through offsets and strides ---- */

static uint32_t crc_table[256];

static void crc_init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}

/* Continue a CRC-32 over more bytes (crc 0 to start), as zlib's crc32(crc, buf, len). */
static uint32_t crc32_update(uint32_t crc, const unsigned char *p, uint64_t len)
{
    uint32_t c = crc ^ 0xFFFFFFFFu;
    for (uint64_t i = 0; i < len; i++)
        c = crc_table[(c ^ p[i]) & 0xFFu] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* H8 has checked that every row read here lies inside the len-byte payload. */
static uint32_t frame_checksum(const struct header *hd, const unsigned char *payload,
                               uint64_t len)
{
    if (hd->format == FMT_JPEG)
        return crc32_update(0, payload, len);
    struct plane_shape shapes[MAX_PLANES];
    unsigned count = plane_shapes(hd->format, hd->width, hd->height, shapes);
    uint32_t crc = 0;
    for (unsigned p = 0; p < count; p++)
        for (uint64_t y = 0; y < shapes[p].rows; y++)
            crc = crc32_update(crc, payload + hd->planes[p].offset + y * hd->planes[p].stride,
                               shapes[p].row_bytes);
    return crc;
}

/* ---- main loop (PROTOCOL.md section 10, "Reading algorithm"; section 12) ---- */

static uint64_t parse_limit(const char *text)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || *end != '\0' || text[0] == '-' || v > SIZE_MAX)
        die(EXIT_USAGE, "bad payload limit %s", text);
    return (uint64_t)v;
}

/* Everything known about a stream is void after a reopen: the last instance, every camera's
 * seq, epoch and mapping, and (empty anyway after an EOF) the buffered bytes. */
static int have_instance;
static uint64_t last_instance;

static int reopen_fifo(int fd, const char *path)
{
    close(fd);
    forget_cameras();
    have_instance = 0;
    pending_at = pending_len = 0;
    return open_and_wait(path);
}

/* A message cut short by EOF (E1): discarded, never printed. Fatal unless -r. */
static void truncated(int reopen, const char *stage, size_t got, size_t len)
{
    if (!reopen)
        die(EXIT_PROTOCOL, "truncated message at EOF: %s has %zu of %zu bytes", stage, got,
            len);
    fprintf(stderr, "%s: truncated message at EOF: %s has %zu of %zu bytes, discarded\n",
            program, stage, got, len);
}

/* A STATE message's reason on one line: control characters, DEL and backslash as \xHH. */
static void print_reason(const unsigned char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (s[i] < 0x20 || s[i] == 0x7F || s[i] == '\\')
            printf("\\x%02x", s[i]);
        else
            putchar(s[i]);
    }
}

static void flush_stdout(void)
{
    if (fflush(stdout) != 0)
        die(EXIT_IO, "cannot write to stdout: %s", strerror(errno));
}

int main(int argc, char **argv)
{
    uint64_t max_payload_len = DEFAULT_MAX_PAYLOAD_LEN;
    const char *path = NULL;
    int bad_usage = 0, checksum = 0, reopen = 0, latency = 0, check_seq = 0;
    uint64_t count_limit = 0; /* 0: no limit */

    if (argc > 0 && argv[0][0] != '\0')
        program = argv[0];
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-m") == 0 && i + 1 < argc)
            max_payload_len = parse_limit(argv[++i]);
        else if (strcmp(argv[i], "-c") == 0)
            checksum = 1;
        else if (strcmp(argv[i], "-r") == 0)
            reopen = 1;
        else if (strcmp(argv[i], "-l") == 0)
            latency = 1;
        else if (strcmp(argv[i], "-s") == 0)
            check_seq = 1;
        else if (strcmp(argv[i], "-n") == 0 && i + 1 < argc)
            count_limit = parse_limit(argv[++i]);
        else if (path == NULL && argv[i][0] != '-')
            path = argv[i];
        else
            bad_usage = 1;
    }
    if (path == NULL || bad_usage) {
        fprintf(stderr,
                "usage: %s [-c] [-l] [-r] [-s] [-n COUNT] [-m MAX_PAYLOAD_BYTES] FIFO\n",
                program);
        return EXIT_USAGE;
    }
    crc_init();

    int fd = open_and_wait(path);
    uint64_t frames = 0;

    unsigned char prefix[PREFIX_LEN];
    static unsigned char header_buf[MAX_HEADER_LEN];
    unsigned char *payload = NULL;
    size_t payload_cap = 0;
    uint64_t stale = 0;

    for (;;) {
        /* beginning this message ends the hold on the previous message's payload */
        if (pending_len == 0 && boundary_read(fd) == 0) { /* R1 */
            if (!reopen)
                break; /* clean EOF at a message boundary */
            fd = reopen_fifo(fd, path); /* the daemon stopped: wait for the next one */
            continue;
        }
        size_t got = take(fd, prefix, PREFIX_LEN);
        if (got < PREFIX_LEN) {
            truncated(reopen, "prefix", got, PREFIX_LEN);
            fd = reopen_fifo(fd, path);
            continue;
        }

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

        /* whole header, including appended fields this reader does not know, and no more */
        got = take(fd, header_buf, header_len);
        if (got < header_len) {
            truncated(reopen, "header", got, header_len);
            fd = reopen_fifo(fd, path);
            continue;
        }
        struct header hd;
        parse_header(header_buf, header_len, payload_len, max_payload_len, &hd);

        if (!hd.shm) { /* a FIFO frame's pixels or a STATE message's reason */
            /* only now, with every length validated, make room for the payload */
            if (payload_len > payload_cap) {
                unsigned char *grown = realloc(payload, (size_t)payload_len);
                if (grown == NULL)
                    die(EXIT_IO, "out of memory for a %" PRIu64 "-byte payload", payload_len);
                payload = grown;
                payload_cap = (size_t)payload_len;
            }
            got = take(fd, payload, (size_t)payload_len);
            if (got < payload_len) {
                truncated(reopen, "payload", got, (size_t)payload_len);
                fd = reopen_fifo(fd, path);
                continue;
            }
        }

        /* the whole message is in: the restart rule (section 8) before using it */
        if (have_instance && hd.instance != last_instance) {
            forget_cameras(); /* every camera's seq and epoch, every mapping */
            printf("restart %016" PRIx64 " %016" PRIx64 "\n", last_instance, hd.instance);
            flush_stdout();
        }
        have_instance = 1;
        last_instance = hd.instance;

        if (hd.is_state) { /* section 13: a camera's state, not a frame; last seq untouched */
            if (!valid_utf8(payload, (size_t)payload_len)) /* T4 */
                die(EXIT_PROTOCOL, "protocol error: state reason is not valid UTF-8");
            char unknown[16];
            const char *name = hd.state < sizeof state_names / sizeof state_names[0]
                                   ? state_names[hd.state] : NULL;
            if (name == NULL) {
                snprintf(unknown, sizeof unknown, "unknown(%u)", hd.state);
                name = unknown;
            }
            printf("state %s %s epoch %" PRIu64 " seq %" PRIu64, hd.camera, name, hd.epoch,
                   hd.seq);
            if (payload_len > 0) {
                putchar(' ');
                print_reason(payload, (size_t)payload_len);
            }
            putchar('\n');
            flush_stdout();
            continue;
        }

        /* section 8: seq continuity per camera within one instance and one open */
        struct camera_state *cam = camera_for(hd.camera);
        if (check_seq && cam->has_seq && hd.seq != cam->last_seq + 1 + hd.missed) {
            printf("seq-error %s %" PRIu64 " after %" PRIu64 " missed %" PRIu64 "\n",
                   hd.camera, hd.seq, cam->last_seq, hd.missed);
            flush_stdout();
        }
        cam->has_seq = 1; /* stale shm frames too: received, though not delivered */
        cam->last_seq = hd.seq;
        cam->last_epoch = hd.epoch;

        const unsigned char *data;
        uint64_t data_len;
        if (hd.shm) {
            /* M0, M1, M2; M3: stale */
            if (!segment_for(cam, &hd.loc) || !stamp_matches(cam, &hd.loc, hd.seq)) {
                stale++;
                continue;
            }
            data = cam->base + hd.loc.offset;
            data_len = hd.loc.length;
        } else {
            data = payload;
            data_len = payload_len;
        }

        char sum[16] = "";
        if (checksum) {
            snprintf(sum, sizeof sum, " %08" PRIx32, frame_checksum(&hd, data, data_len));
            if (hd.shm && !stamp_matches(cam, &hd.loc, hd.seq)) {
                stale++; /* the slot was rewritten while we read it: never report torn data */
                continue;
            }
        }
        char late[32] = "";
        if (latency) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            int64_t now_ns = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
            snprintf(late, sizeof late, " %" PRId64, now_ns - hd.publish_mono_ns);
        }
        printf("%s %" PRIu64 " %" PRIu64 " %" PRIu64 " %s %" PRIu32 "x%" PRIu32 " %" PRIu64
               " %d%s%s\n", hd.camera, hd.seq, hd.epoch, hd.missed, format_names[hd.format],
               hd.width, hd.height, data_len, (hd.flags & FLAG_KEYFRAME) ? 1 : 0, sum, late);
        flush_stdout();
        if (count_limit != 0 && ++frames >= count_limit)
            break;
    }
    if (stale > 0)
        fprintf(stderr, "%s: skipped %" PRIu64 " stale shm frame(s)\n", program, stale);
    forget_cameras();
    free(cameras);
    free(segment_path);
    free(payload);
    close(fd);
    return 0;
}
