/* Access-log lines (pc_lines.h). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "pc_dispatch.h"
#include "pc_lines.h"

/* Pending bytes past which adds are refused: fd 1 is not being drained. */
#define LINES_MAX ((size_t)1 << 30)
#define LINES_MIN_CAPACITY ((size_t)16384)

struct pc_lines {
  pthread_mutex_t lock;
  char *data;
  size_t used;
  size_t capacity;
  size_t flush_bytes;
  struct pc_score_slot *slot;
};

struct pc_lines *pc_lines_new(int32_t flush_bytes, int *err) {
  int dummy;
  struct pc_lines *lines;
  if (err == NULL) err = &dummy;
  if (flush_bytes < 1) {
    *err = -EINVAL;
    return NULL;
  }
  lines = calloc(1, sizeof *lines);
  if (lines == NULL) {
    *err = -ENOMEM;
    return NULL;
  }
  pthread_mutex_init(&lines->lock, NULL);
  lines->flush_bytes = (size_t)flush_bytes;
  *err = 0;
  return lines;
}

void pc_lines_free(struct pc_lines *lines) {
  if (lines == NULL) return;
  pthread_mutex_destroy(&lines->lock);
  free(lines->data);
  free(lines);
}

static int32_t pending_count(const struct pc_lines *lines) {
  return lines->used > INT32_MAX ? INT32_MAX : (int32_t)lines->used;
}

void pc_lines_record_into(struct pc_lines *lines, struct pc_score_slot *slot) {
  pthread_mutex_lock(&lines->lock);
  lines->slot = slot;
  pthread_mutex_unlock(&lines->lock);
}

/* Room for need more bytes; called with the lock held. */
static int reserve(struct pc_lines *lines, size_t need) {
  size_t capacity;
  char *data;
  if (need > LINES_MAX - lines->used) return -ENOBUFS;
  if (lines->used + need <= lines->capacity) return 0;
  capacity = lines->capacity ? lines->capacity : LINES_MIN_CAPACITY;
  while (capacity < lines->used + need) capacity *= 2;
  data = realloc(lines->data, capacity);
  if (data == NULL) return -ENOMEM;
  lines->data = data;
  lines->capacity = capacity;
  return 0;
}

int32_t pc_lines_add(struct pc_lines *lines, const char *data, int32_t size) {
  int rc;
  if (size < 0) return -EINVAL;
  pthread_mutex_lock(&lines->lock);
  rc = reserve(lines, (size_t)size);
  if (rc == 0) {
    if (size > 0) memcpy(lines->data + lines->used, data, (size_t)size);
    lines->used += (size_t)size;
    rc = lines->used >= lines->flush_bytes;
  }
  pthread_mutex_unlock(&lines->lock);
  return rc;
}

/* '" ' then status in decimal then '\n' into out (room for 16); returns the length. */
static size_t status_end(char *out, int32_t status) {
  char digits[12];
  size_t count = 0, length = 0;
  int64_t value = status;
  out[length++] = '"';
  out[length++] = ' ';
  if (value < 0) {
    out[length++] = '-';
    value = -value;
  }
  do {
    digits[count++] = (char)('0' + value % 10);
    value /= 10;
  } while (value > 0);
  while (count > 0) out[length++] = digits[--count];
  out[length++] = '\n';
  return length;
}

int32_t pc_lines_add_request(struct pc_lines *lines, const char *prefix, const char *head, int32_t status,
                             double started_s) {
  char end[16];
  size_t prefix_len = strlen(prefix), line_len = strcspn(head, "\r\n"), end_len = status_end(end, status);
  char *at;
  int rc;
  pthread_mutex_lock(&lines->lock);
  if (lines->slot != NULL) pc_score_record_since(lines->slot, status, started_s);
  rc = reserve(lines, prefix_len + line_len + end_len);
  if (rc == 0) {
    at = lines->data + lines->used;
    memcpy(at, prefix, prefix_len);
    memcpy(at + prefix_len, head, line_len);
    memcpy(at + prefix_len + line_len, end, end_len);
    lines->used += prefix_len + line_len + end_len;
    rc = lines->used >= lines->flush_bytes;
  }
  pthread_mutex_unlock(&lines->lock);
  return rc;
}

int32_t pc_lines_pending(struct pc_lines *lines) {
  int32_t count;
  pthread_mutex_lock(&lines->lock);
  count = pending_count(lines);
  pthread_mutex_unlock(&lines->lock);
  return count;
}

int32_t pc_lines_take(struct pc_lines *lines, char *out, int32_t capacity) {
  size_t count;
  if (capacity < 0) return -EINVAL;
  pthread_mutex_lock(&lines->lock);
  count = lines->used < (size_t)capacity ? lines->used : (size_t)capacity;
  if (count < lines->used) {
    /* Cut after the last whole line that fits, if one does. */
    size_t whole = count;
    while (whole > 0 && lines->data[whole - 1] != '\n') whole--;
    if (whole > 0) count = whole;
  }
  if (count > 0) {
    memcpy(out, lines->data, count);
    memmove(lines->data, lines->data + count, lines->used - count);
    lines->used -= count;
  }
  pthread_mutex_unlock(&lines->lock);
  return (int32_t)count;
}
