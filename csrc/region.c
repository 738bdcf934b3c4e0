/* Shared regions: memfd (anonymous) or shm_open (named), header + data. */
#include "region.h"
#include "pc_shared.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define PC_REGION_NAME_MAX 200

size_t pc_region_header_size(void) { return PC_REGION_HEADER_SIZE; }
int pc_region_name_max(void) { return PC_REGION_NAME_MAX; }

/* "/name" for shm_open. Names are one path component: no '/', not "." or "..". */
static int shm_path(const char *name, char *out, size_t out_size) {
  size_t len = strlen(name);
  if (len == 0 || strchr(name, '/') != NULL || strcmp(name, ".") == 0 ||
      strcmp(name, "..") == 0)
    return -EINVAL;
  if (len > PC_REGION_NAME_MAX) return -ENAMETOOLONG;
  snprintf(out, out_size, "/%s", name);
  return 0;
}

/* Refuse sizes that could never be backed: touching them later would raise
 * SIGBUS (a full /dev/shm) or wake the OOM killer, both worse than an error now. */
static int check_capacity(uint64_t total, int named) {
  long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
  struct statvfs vfs;
  if (pages > 0 && page_size > 0 && total > (uint64_t)pages * (uint64_t)page_size)
    return -ENOMEM;
  if (named && statvfs("/dev/shm", &vfs) == 0 &&
      total > (uint64_t)vfs.f_bavail * vfs.f_frsize)
    return -ENOMEM;
  return 0;
}

int pc_region_create(const char *name, uint64_t data_size) {
  char path[PC_REGION_NAME_MAX + 2];
  struct pc_region_header head;
  uint64_t total;
  int fd, rc;

  if (data_size == 0) return -EINVAL;
  if (data_size > (uint64_t)INT64_MAX - PC_REGION_HEADER_SIZE) return -ENOMEM;
  total = data_size + PC_REGION_HEADER_SIZE;
  if (name != NULL && (rc = shm_path(name, path, sizeof path)) < 0) return rc;
  if ((rc = check_capacity(total, name != NULL)) < 0) return rc;

  if (name != NULL)
    fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  else
    fd = memfd_create("pyclusterc", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return -errno;

  memset(&head, 0, sizeof head);
  head.magic = PC_REGION_MAGIC;
  head.data_size = data_size;
  head.version = PC_REGION_VERSION;
  head.header_size = PC_REGION_HEADER_SIZE;
  if (ftruncate(fd, (off_t)total) < 0 ||
      pwrite(fd, &head, offsetof(struct pc_region_header, waiters), 0) < 0)
    goto fail;
  /* A peer that could shrink the memfd could make our mapping SIGBUS. */
  if (name == NULL && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
    goto fail;
  return fd;

fail:
  rc = -errno;
  close(fd);
  if (name != NULL) shm_unlink(path);
  return rc;
}

int pc_region_open(const char *name) {
  char path[PC_REGION_NAME_MAX + 2];
  int fd, rc;
  if ((rc = shm_path(name, path, sizeof path)) < 0) return rc;
  fd = shm_open(path, O_RDWR | O_CLOEXEC, 0);
  return fd < 0 ? -errno : fd;
}

int pc_region_data_size(int fd, uint64_t *data_size) {
  struct pc_region_header head;
  struct stat st;
  ssize_t n;
  do n = pread(fd, &head, offsetof(struct pc_region_header, waiters), 0);
  while (n < 0 && errno == EINTR);
  if (n < 0) return -errno;
  if (n != (ssize_t)offsetof(struct pc_region_header, waiters) ||
      head.magic != PC_REGION_MAGIC || head.version != PC_REGION_VERSION ||
      head.header_size != PC_REGION_HEADER_SIZE)
    return -EPROTO;
  if (fstat(fd, &st) < 0) return -errno;
  if ((uint64_t)st.st_size < head.data_size + PC_REGION_HEADER_SIZE) return -EPROTO;
  *data_size = head.data_size;
  return 0;
}

void *pc_region_map_header(int fd, int *err) {
  void *p = mmap(NULL, PC_REGION_HEADER_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    *err = -errno;
    return NULL;
  }
  *err = 0;
  return p;
}

int pc_region_unmap_header(void *header) {
  return munmap(header, PC_REGION_HEADER_SIZE) < 0 ? -errno : 0;
}

int pc_region_unlink(const char *name) {
  char path[PC_REGION_NAME_MAX + 2];
  int rc;
  if ((rc = shm_path(name, path, sizeof path)) < 0) return rc;
  return shm_unlink(path) < 0 ? -errno : 0;
}
