/* pc_lines: the access log's buffer. Lines in, whole lines out, in order, from
 * several threads at once; a take never splits a line it can keep whole. */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "pc_dispatch.h"
#include "pc_lines.h"
#include "test.h"

static struct pc_lines *new_lines(int32_t flush_bytes) {
  int err = 1;
  struct pc_lines *lines = pc_lines_new(flush_bytes, &err);
  ASSERT(lines != NULL);
  ASSERT_EQ(err, 0);
  return lines;
}

/* Everything pending, NUL-terminated, into out (cap bytes). */
static int32_t take_all(struct pc_lines *lines, char *out, int32_t cap) {
  int32_t count = pc_lines_take(lines, out, cap - 1);
  ASSERT_GE(count, 0);
  out[count] = '\0';
  return count;
}

static void test_bad_input(void) {
  int err = 0;
  ASSERT(pc_lines_new(0, &err) == NULL);
  ASSERT_EQ(err, -EINVAL);
  ASSERT(pc_lines_new(-5, NULL) == NULL);
  struct pc_lines *lines = new_lines(64);
  ASSERT_EQ(pc_lines_add(lines, "x", -1), -EINVAL);
  char out[8];
  ASSERT_EQ(pc_lines_take(lines, out, -1), -EINVAL);
  ASSERT_EQ(pc_lines_take(lines, out, 0), 0);
  ASSERT_EQ(pc_lines_pending(lines), 0);
  pc_lines_free(lines);
  pc_lines_free(NULL);
}

/* The default line: prefix, the request line up to the first CR or LF, the status
 * (any int32, negative too), a newline; the add says 1 from flush_bytes pending. */
static void test_request_lines(void) {
  struct pc_lines *lines = new_lines(60);
  char out[512];
  ASSERT_EQ(pc_lines_add_request(lines, "1.2.3.4 - \"", "GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n", 200, 0.0), 0);
  ASSERT_EQ(pc_lines_add_request(lines, "- - \"", "POST / HTTP/1.0\nX: y\n\n", -2147483647 - 1, 0.0), 1);
  ASSERT_EQ(pc_lines_add_request(lines, "", "BREW /pot", 2147483647, 0.0), 1);
  ASSERT_EQ(pc_lines_add(lines, "formatted\n", 10), 1);
  ASSERT_EQ(pc_lines_add(lines, "", 0), 1);
  take_all(lines, out, sizeof out);
  ASSERT(strcmp(out,
                "1.2.3.4 - \"GET /a?b HTTP/1.1\" 200\n"
                "- - \"POST / HTTP/1.0\" -2147483648\n"
                "BREW /pot\" 2147483647\n"
                "formatted\n") == 0);
  ASSERT_EQ(pc_lines_pending(lines), 0);
  ASSERT_EQ(pc_lines_add_request(lines, "", "GET / HTTP/1.1\r\n", 0, 0.0), 0);
  pc_lines_free(lines);
}

/* A take with less room than pending stops after the last whole line that fits; a
 * line longer than the room comes out in parts, so the buffer always drains. */
static void test_take_cuts_at_a_line(void) {
  struct pc_lines *lines = new_lines(1 << 20);
  char out[64];
  pc_lines_add(lines, "aaaa\nbbbb\ncccccccccccccccccccc\n", 31);
  ASSERT_EQ(pc_lines_take(lines, out, 12), 10);
  ASSERT(memcmp(out, "aaaa\nbbbb\n", 10) == 0);
  ASSERT_EQ(pc_lines_take(lines, out, 8), 8);
  ASSERT(memcmp(out, "cccccccc", 8) == 0);
  ASSERT_EQ(pc_lines_pending(lines), 13);
  ASSERT_EQ(take_all(lines, out, sizeof out), 13);
  ASSERT(strcmp(out, "cccccccccccc\n") == 0);
  pc_lines_free(lines);
}

/* Past its first allocation the buffer grows; what was there is kept. */
static void test_growth(void) {
  struct pc_lines *lines = new_lines(1 << 30);
  static char big[200000];
  static char out[400008];
  memset(big, 'z', sizeof big - 1);
  big[sizeof big - 1] = '\n';
  ASSERT_EQ(pc_lines_add(lines, "first\n", 6), 0);
  ASSERT_EQ(pc_lines_add(lines, big, (int32_t)sizeof big), 0);
  ASSERT_EQ(pc_lines_add(lines, big, (int32_t)sizeof big), 0);
  ASSERT_EQ(pc_lines_pending(lines), 6 + 2 * (int32_t)sizeof big);
  ASSERT_EQ(take_all(lines, out, sizeof out), 6 + 2 * (int32_t)sizeof big);
  ASSERT(memcmp(out, "first\nzzz", 9) == 0);
  ASSERT_EQ(out[6 + 2 * sizeof big - 1], '\n');
  pc_lines_free(lines);
}

/* With a slot, each request line also records its response (as
 * pc_score_record_since); unset, it records nothing. */
static void test_records_into_a_slot(void) {
  struct pc_lines *lines = new_lines(1 << 20);
  struct pc_score_slot slot;
  struct timespec now;
  memset(&slot, 0, sizeof slot);
  clock_gettime(CLOCK_MONOTONIC, &now);
  double now_s = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
  pc_lines_add_request(lines, "", "GET / HTTP/1.1\r\n", 200, now_s);
  ASSERT_EQ(slot.status_classes[1], 0);
  pc_lines_record_into(lines, &slot);
  pc_lines_add_request(lines, "", "GET / HTTP/1.1\r\n", 404, now_s - 0.030);
  pc_lines_add_request(lines, "", "GET / HTTP/1.1\r\n", 200, now_s);
  ASSERT_EQ(slot.status_classes[3], 1);
  ASSERT_EQ(slot.status_classes[1], 1);
  ASSERT(slot.duration_us >= 30000 && slot.duration_us < 5000000);
  pc_lines_record_into(lines, NULL);
  pc_lines_add_request(lines, "", "GET / HTTP/1.1\r\n", 500, now_s);
  ASSERT_EQ(slot.status_classes[4], 0);
  ASSERT_EQ(pc_lines_pending(lines), 4 * 20); /* each "GET / HTTP/1.1\" 2xx\n" */
  pc_lines_free(lines);
}

/* Four threads add numbered lines while a fifth takes in small pieces: every line
 * comes out once, whole, and each thread's lines in its order (TSan checks the
 * locking). */
enum { ADDERS = 4, PER_ADDER = 20000 };
static struct pc_lines *shared_lines;
static int adders_done;
static pthread_mutex_t done_lock = PTHREAD_MUTEX_INITIALIZER;

static void *add_lines(void *arg) {
  int index = (int)(intptr_t)arg;
  char prefix[16], head[64];
  snprintf(prefix, sizeof prefix, "%d ", index);
  for (int n = 0; n < PER_ADDER; n++) {
    snprintf(head, sizeof head, "GET /%d HTTP/1.1\r\nHost: x\r\n\r\n", n);
    ASSERT_GE(pc_lines_add_request(shared_lines, prefix, head, 200, 0.0), 0);
  }
  pthread_mutex_lock(&done_lock);
  adders_done++;
  pthread_mutex_unlock(&done_lock);
  return NULL;
}

/* One taken line: its thread's next number. */
static int check_line(const char *line, size_t length, int *next) {
  int index, n;
  char tail[32];
  char copy[64];
  ASSERT(length < sizeof copy);
  memcpy(copy, line, length);
  copy[length] = '\0';
  ASSERT_EQ(sscanf(copy, "%d GET /%d HTTP/1.1\" %31s", &index, &n, tail), 3);
  ASSERT(strcmp(tail, "200") == 0);
  ASSERT(index >= 0 && index < ADDERS);
  ASSERT_EQ(n, next[index]);
  next[index]++;
  return 1;
}

static void test_threads(void) {
  pthread_t threads[ADDERS];
  int next[ADDERS] = {0};
  char out[700];
  long seen = 0;
  shared_lines = new_lines(4096);
  for (int i = 0; i < ADDERS; i++)
    ASSERT_EQ(pthread_create(&threads[i], NULL, add_lines, (void *)(intptr_t)i), 0);
  for (;;) {
    pthread_mutex_lock(&done_lock);
    int done = adders_done == ADDERS;
    pthread_mutex_unlock(&done_lock);
    int32_t count = pc_lines_take(shared_lines, out, (int32_t)sizeof out);
    ASSERT_GE(count, 0);
    ASSERT(count == 0 || out[count - 1] == '\n'); /* the room holds many lines: never cut */
    for (int32_t start = 0, i = 0; i < count; i++) {
      if (out[i] == '\n') {
        seen += check_line(out + start, (size_t)(i - start), next);
        start = i + 1;
      }
    }
    if (done && count == 0 && pc_lines_pending(shared_lines) == 0) break;
  }
  for (int i = 0; i < ADDERS; i++) {
    ASSERT_EQ(pthread_join(threads[i], NULL), 0);
    ASSERT_EQ(next[i], PER_ADDER);
  }
  ASSERT_EQ(seen, (long)ADDERS * PER_ADDER);
  pc_lines_free(shared_lines);
}

int main(void) {
  alarm(50); /* whatever happens, this test ends */
  RUN_TEST(test_bad_input);
  RUN_TEST(test_request_lines);
  RUN_TEST(test_take_cuts_at_a_line);
  RUN_TEST(test_growth);
  RUN_TEST(test_records_into_a_slot);
  RUN_TEST(test_threads);
  return 0;
}
