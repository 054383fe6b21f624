// mirror-receiver AMI: Amazon Linux 2023 with the release binary, the hardened systemd unit,
// UDP receive tuning and bounded journald, for the Auto Scaling group of
// cloudformation/mirror-receiver.yaml (behind the NLB's UDP 4789 target group, or the
// Gateway Load Balancer's GENEVE 6081 one). It also carries mirror-receiver-capture.service
// (`mirror-receiver capture`, live from an interface: SPAN/TAP ports, packet mirroring
// collectors), installed but disabled: a host runs one of the two.
//
// Build both architectures (binaries built beforehand, e.g. with cargo build --release
// --target x86_64-unknown-linux-gnu / aarch64-unknown-linux-gnu):
//
//   packer build \
//     -var binary_x86_64=target/x86_64-unknown-linux-gnu/release/mirror-receiver \
//     -var binary_arm64=target/aarch64-unknown-linux-gnu/release/mirror-receiver \
//     packer/mirror-receiver.pkr.hcl
//
// One architecture: add -only=amazon-ebs.x86_64 (or amazon-ebs.arm64).
//
// The binaries link glibc, OpenSSL 3 and zlib dynamically: build them where glibc is at most
// 2.34 (Amazon Linux 2023's), e.g. on Debian 12 today (the binary needs GLIBC_2.34) or on
// AL2023 itself. A binary that links libpcap too (for `capture`'s filter expressions) finds
// the AMI's (dnf libpcap) only under the soname it was linked with: Debian's libpcap has its
// own, libpcap.so.0.8, so a binary built there may need building on AL2023 instead. The build
// runs `mirror-receiver --version` on the instance and fails if the binary cannot start there.
//
// IMDSv2: Amazon Linux 2023 AMIs are registered with ImdsSupport v2.0, so the build instance
// requires IMDSv2 (unless the account's IMDS default says otherwise); the receivers' launch
// template in the stack sets HttpTokens: required itself. The template keeps to the options
// Debian 12's packer 1.6.6 knows, so `packer validate` and `packer fmt -check` pass with it
// (tests/infra.rs); Packer >= 1.10 needs `packer plugins install github.com/hashicorp/amazon`.

variable "region" {
  type        = string
  default     = "us-east-1"
  description = "Region the AMI is built in (copy it elsewhere with ami_regions)."
}

variable "ami_regions" {
  type        = list(string)
  default     = []
  description = "Further regions to copy the AMI to."
}

variable "version" {
  type        = string
  default     = "0.1.0"
  description = "mirror-receiver version, recorded in the AMI name and tags."
}

variable "binary_x86_64" {
  type        = string
  default     = "target/x86_64-unknown-linux-gnu/release/mirror-receiver"
  description = "The x86_64 release binary, uploaded to /usr/bin/mirror-receiver."
}

variable "binary_arm64" {
  type        = string
  default     = "target/aarch64-unknown-linux-gnu/release/mirror-receiver"
  description = "The arm64 (aarch64) release binary, uploaded to /usr/bin/mirror-receiver."
}

variable "instance_type_x86_64" {
  type        = string
  default     = "c6i.large"
  description = "Build instance type for x86_64."
}

variable "instance_type_arm64" {
  type        = string
  default     = "c7g.large"
  description = "Build instance type for arm64."
}

variable "kms_key_id" {
  type        = string
  default     = ""
  description = "KMS key for the encrypted root volume and AMI snapshot; empty: the account's aws/ebs key."
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Subnet for the build instance; empty: the default VPC."
}

variable "root_volume_size" {
  type        = number
  default     = 8
  description = "Root volume size in GiB (the launch template may grow it)."
}

locals {
  timestamp = regex_replace(timestamp(), "[- TZ:]", "")
  ami_tags = {
    Name        = "mirror-receiver"
    Application = "mirror-receiver"
    Version     = var.version
    BaseOS      = "Amazon Linux 2023"
  }
}

// What both architectures share; the build block names each one and fills in the rest.
source "amazon-ebs" "al2023" {
  region        = var.region
  ami_regions   = var.ami_regions
  subnet_id     = var.subnet_id
  ssh_username  = "ec2-user"
  ena_support   = true
  sriov_support = true
  encrypt_boot  = true
  kms_key_id    = var.kms_key_id

  launch_block_device_mappings {
    device_name           = "/dev/xvda"
    volume_size           = var.root_volume_size
    volume_type           = "gp3"
    iops                  = 3000
    throughput            = 125
    encrypted             = true
    kms_key_id            = var.kms_key_id
    delete_on_termination = true
  }
}

build {
  source "amazon-ebs.al2023" {
    name            = "x86_64"
    instance_type   = var.instance_type_x86_64
    ami_name        = "mirror-receiver-${var.version}-x86_64-${local.timestamp}"
    ami_description = "mirror-receiver ${var.version} (AWS VPC Traffic Mirroring receiver) on Amazon Linux 2023, x86_64"
    source_ami_filter {
      filters = {
        name                = "al2023-ami-2023.*-kernel-*-x86_64"
        architecture        = "x86_64"
        virtualization-type = "hvm"
        root-device-type    = "ebs"
      }
      owners      = ["amazon"]
      most_recent = true
    }
    tags     = merge(local.ami_tags, { Architecture = "x86_64" })
    run_tags = { Name = "packer mirror-receiver x86_64" }
  }

  source "amazon-ebs.al2023" {
    name            = "arm64"
    instance_type   = var.instance_type_arm64
    ami_name        = "mirror-receiver-${var.version}-arm64-${local.timestamp}"
    ami_description = "mirror-receiver ${var.version} (AWS VPC Traffic Mirroring receiver) on Amazon Linux 2023, arm64"
    source_ami_filter {
      filters = {
        name                = "al2023-ami-2023.*-kernel-*-arm64"
        architecture        = "arm64"
        virtualization-type = "hvm"
        root-device-type    = "ebs"
      }
      owners      = ["amazon"]
      most_recent = true
    }
    tags     = merge(local.ami_tags, { Architecture = "arm64" })
    run_tags = { Name = "packer mirror-receiver arm64" }
  }


  provisioner "shell" {
    inline = ["mkdir -p /tmp/mirror-receiver"]
  }

  // The binary of the architecture being built.
  provisioner "file" {
    only        = ["amazon-ebs.x86_64"]
    source      = var.binary_x86_64
    destination = "/tmp/mirror-receiver/mirror-receiver"
  }

  provisioner "file" {
    only        = ["amazon-ebs.arm64"]
    source      = var.binary_arm64
    destination = "/tmp/mirror-receiver/mirror-receiver"
  }

  provisioner "file" {
    sources = [
      "${path.root}/files/mirror-receiver.service",
      "${path.root}/files/mirror-receiver-capture.service",
      "${path.root}/files/mirror-receiver.env",
      "${path.root}/files/90-mirror-receiver-sysctl.conf",
      "${path.root}/files/90-mirror-receiver-journald.conf",
      "${path.root}/files/amazon-cloudwatch-agent.json",
      "${path.root}/files/mirror-receiver-prometheus.yaml",
      "${path.root}/../README.md",
    ]
    destination = "/tmp/mirror-receiver/"
  }

  provisioner "shell" {
    execute_command = "sudo sh -eux '{{ .Path }}'"
    inline = [
      "dnf -y upgrade --releasever=latest",
      "dnf -y install amazon-cloudwatch-agent libpcap",
      "cd /tmp/mirror-receiver",
      // The binary must run on this machine (right architecture, libraries present).
      "install -m 0755 -o root -g root mirror-receiver /usr/bin/mirror-receiver",
      "/usr/bin/mirror-receiver --version",
      "install -D -m 0644 -o root -g root mirror-receiver.service /etc/systemd/system/mirror-receiver.service",
      "install -D -m 0644 -o root -g root mirror-receiver-capture.service /etc/systemd/system/mirror-receiver-capture.service",
      "install -d -m 0755 -o root -g root /etc/mirror-receiver",
      "install -m 0600 -o root -g root mirror-receiver.env /etc/mirror-receiver/env",
      "install -D -m 0644 -o root -g root README.md /usr/share/doc/mirror-receiver/README.md",
      "install -D -m 0644 -o root -g root 90-mirror-receiver-sysctl.conf /etc/sysctl.d/90-mirror-receiver.conf",
      "install -D -m 0644 -o root -g root 90-mirror-receiver-journald.conf /etc/systemd/journald.conf.d/90-mirror-receiver.conf",
      "install -D -m 0644 -o root -g root amazon-cloudwatch-agent.json /opt/aws/amazon-cloudwatch-agent/etc/mirror-receiver.json",
      "install -D -m 0644 -o root -g root mirror-receiver-prometheus.yaml /opt/aws/amazon-cloudwatch-agent/etc/mirror-receiver-prometheus.yaml",
      "sysctl --system",
      "test \"$(sysctl -n net.core.rmem_max)\" = 134217728",
      "systemctl daemon-reload",
      "systemd-analyze verify /etc/systemd/system/mirror-receiver.service /etc/systemd/system/mirror-receiver-capture.service",
      "systemctl enable mirror-receiver",
      // Installed, not enabled: `systemctl disable --now mirror-receiver` and `systemctl enable
      // --now mirror-receiver-capture` on a host that captures (README "Deployment (AWS)").
      "test \"$(systemctl is-enabled mirror-receiver-capture)\" = disabled",
      "rm -rf /tmp/mirror-receiver",
      // No host keys, logs or cloud-init state from the build in the image.
      "dnf clean all",
      "cloud-init clean --logs",
      "rm -f /etc/ssh/ssh_host_*",
      "journalctl --rotate && journalctl --vacuum-time=1s",
    ]
  }
}
