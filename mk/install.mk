# Install anywhere, video, notifications (issue 16): the copied binary renders with its build folder hidden (root:
# mount namespace), one-sentence errors.
APT_PACKAGES += ffmpeg util-linux

TEST_STEPS += test-install

.PHONY: test-install

## test-install: tests/install/test_install.py, real Blender, one loopback node (about a minute), and `make install`
## into a temporary DESTDIR from a release build with the static Swift standard library.
test-install: setup
	$(SWIFT) build --product rexnode $(BUILD_FLAGS)
	$(SWIFT) build -c release --product rexnode $(STATIC_FLAGS) $(BUILD_FLAGS)
	REXNODE_BIN=$(BIN)/rexnode python3 -m unittest -v tests/install/test_install.py

# make install [PREFIX=/usr/local] [DESTDIR=] [SYSCONFDIR=/etc] [SYSTEMDDIR=/lib/systemd/system]: the release binary
# (Swift's standard library linked in statically where the toolchain can: libsodium, sqlite and glibc stay shared)
# and a systemd unit reading /etc/rexnode/rexnode.conf (kept if present).
PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
SYSTEMDDIR ?= /lib/systemd/system
STATIC_FLAGS ?= $(if $(filter Linux,$(shell uname -s)),--static-swift-stdlib,)

.PHONY: install install-files

install: setup
	$(SWIFT) build -c release --product rexnode $(STATIC_FLAGS) $(BUILD_FLAGS)
	$(MAKE) install-files

## install-files: copies an already built release binary and the unit (used by `install`, and by tests with DESTDIR).
install-files:
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(SYSTEMDDIR) $(DESTDIR)$(SYSCONFDIR)/rexnode
	install -m 0755 $(REL)/rexnode $(DESTDIR)$(PREFIX)/bin/rexnode
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' scripts/systemd/rexnode.service.in \
	  > $(DESTDIR)$(SYSTEMDDIR)/rexnode.service
	chmod 0644 $(DESTDIR)$(SYSTEMDDIR)/rexnode.service
	test -e $(DESTDIR)$(SYSCONFDIR)/rexnode/rexnode.conf || \
	  install -m 0644 scripts/systemd/rexnode.conf $(DESTDIR)$(SYSCONFDIR)/rexnode/rexnode.conf
