/*
 * vfio_probe: the smallest check that VFIO works in the guest. Opens
 * /dev/vfio/vfio and /dev/vfio/<group>, issues VFIO_GET_API_VERSION,
 * VFIO_CHECK_EXTENSION (sPAPR TCE v1, v2, EEH) and VFIO_GROUP_GET_STATUS,
 * all with the constants of <linux/vfio.h>, and prints one line:
 *   PROBE api=0 api_ioctl=0x20003b64 ext_spapr_tce=1 ext_spapr_tce_v2=1 ext_eeh=0 group=1 group_flags=0x1 viable=1
 * Cross-compiled static for ppc64le. Exit 0 only when the API version is
 * VFIO_API_VERSION and the group is viable.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	const char *group = argc > 1 ? argv[1] : getenv("PVDP_GROUP");
	char path[64];
	int container, fd, api, v1, v2, eeh, rc = 0;
	struct vfio_group_status status;

	if (!group) {
		fprintf(stderr, "usage: vfio_probe GROUP (or PVDP_GROUP)\n");
		return 2;
	}
	container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
	if (container < 0) {
		printf("PROBE error=open-container errno=%d (%s)\n", errno, strerror(errno));
		return 1;
	}
	api = ioctl(container, VFIO_GET_API_VERSION);
	v1 = ioctl(container, VFIO_CHECK_EXTENSION, VFIO_SPAPR_TCE_IOMMU);
	v2 = ioctl(container, VFIO_CHECK_EXTENSION, VFIO_SPAPR_TCE_v2_IOMMU);
	eeh = ioctl(container, VFIO_CHECK_EXTENSION, VFIO_EEH);

	snprintf(path, sizeof(path), "/dev/vfio/%s", group);
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		printf("PROBE error=open-group path=%s errno=%d (%s)\n", path, errno, strerror(errno));
		return 1;
	}
	memset(&status, 0, sizeof(status));
	status.argsz = sizeof(status);
	if (ioctl(fd, VFIO_GROUP_GET_STATUS, &status) < 0) {
		printf("PROBE error=group-status errno=%d (%s)\n", errno, strerror(errno));
		return 1;
	}
	printf("PROBE api=%d api_ioctl=0x%lx status_ioctl=0x%lx ext_spapr_tce=%d ext_spapr_tce_v2=%d ext_eeh=%d "
	       "group=%s group_flags=0x%x viable=%d\n",
	       api, (unsigned long)VFIO_GET_API_VERSION, (unsigned long)VFIO_GROUP_GET_STATUS, v1, v2, eeh, group,
	       status.flags, !!(status.flags & VFIO_GROUP_FLAGS_VIABLE));
	if (api != VFIO_API_VERSION || !(status.flags & VFIO_GROUP_FLAGS_VIABLE))
		rc = 1;
	close(fd);
	close(container);
	return rc;
}
