/* Access-log lines waiting for their write: one growing buffer per log, filled once
 * per response and emptied by the flush, a few times a second, in one write.
 *
 * Plain declarations only (this header is also cffi's cdef, see pc_channel.h).
 * The per-request call has as few arguments as it can (cffi spends about 100
 * instructions converting each, and more for a pointer to a C object), ints are
 * int32_t (size_t takes CPython's byte-array path), and the adds return 0 or 1, not a
 * count (a small int needs no allocation).
 * Functions return >= 0 or -errno. Every function takes the buffer's lock: threads
 * may add and take at once; what take leaves is kept, in order.
 */
#ifndef PC_LINES_H
#define PC_LINES_H
#include <stdint.h>

struct pc_score_slot;
struct pc_lines;

/* flush_bytes: the adds return 1 once this many bytes are pending (the caller then
 * flushes). NULL and *err = -errno on failure (-EINVAL for flush_bytes < 1). */
struct pc_lines *pc_lines_new(int32_t flush_bytes, int *err);
void pc_lines_free(struct pc_lines *lines);
/* slot not NULL: each pc_lines_add_request also records its response there
 * (pc_score_record_since), so that a server with the access log and metrics makes
 * one call per response. NULL: lines only. The slot must outlive the lines, or be
 * unset first. */
void pc_lines_record_into(struct pc_lines *lines, struct pc_score_slot *slot);
/* size bytes as they are (a formatted line with its newline). Returns 1 when
 * flush_bytes or more are pending after it, else 0; -EINVAL for a negative size,
 * -ENOBUFS past 1 GiB pending, -ENOMEM. */
int32_t pc_lines_add(struct pc_lines *lines, const char *data, int32_t size);
/* The default line of one response: prefix, then the request line of head (the
 * head as the client sent it; its request line ends at the first CR or LF), then '" '
 * and the status and a newline. prefix and head are NUL-terminated (Python bytes
 * objects are). The record (pc_lines_record_into) is made with started_s as the
 * request's start, even when the line is refused. Returns as pc_lines_add. */
int32_t pc_lines_add_request(struct pc_lines *lines, const char *prefix, const char *head, int32_t status,
                             double started_s);
int32_t pc_lines_pending(struct pc_lines *lines);
/* Copies up to capacity bytes of whole lines into out and drops them from the
 * buffer; returns the count. A line longer than capacity is copied in part (the
 * rest comes next time), so that the buffer always drains. */
int32_t pc_lines_take(struct pc_lines *lines, char *out, int32_t capacity);

#endif
