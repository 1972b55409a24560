#!/usr/bin/env bash
# One-time Google Cloud setup for cluster-gcp.yaml (README, "Securing the cluster"). Not run from
# this repository (it needs GCP credentials); read it before running it.
#   PROJECT=my-project BUCKET=my-bucket MY_IP=203.0.113.7/32 cluster/gcp-setup.sh
# Makes: the service accounts t2i-ray-head (manages instances, the bucket) and t2i-ray-worker (the
# bucket only); the network t2i-ray with the subnetwork t2i-ray (10.10.0.0/20) and two firewall
# rules: SSH from MY_IP and all traffic between the subnetwork's addresses (node to node).
set -euo pipefail
: "${PROJECT:?set PROJECT to the GCP project id (the YOUR-PROJECT-ID of cluster-gcp.yaml)}"
: "${BUCKET:?set BUCKET to the GCS bucket of --storage-path (name only, no gs://)}"
: "${MY_IP:?set MY_IP to the address range allowed to SSH in, e.g. 203.0.113.7/32}"
REGION="${REGION:-us-central1}"
SUBNET_RANGE=10.10.0.0/20
head="t2i-ray-head@$PROJECT.iam.gserviceaccount.com"
worker="t2i-ray-worker@$PROJECT.iam.gserviceaccount.com"

gcloud iam service-accounts create t2i-ray-head --project "$PROJECT" --display-name "t2i-ray head"
gcloud iam service-accounts create t2i-ray-worker --project "$PROJECT" --display-name "t2i-ray workers"
for sa in "$head" "$worker"; do  # the one bucket: a binding on the bucket, not on the project
  gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" --member "serviceAccount:$sa" \
    --role roles/storage.objectAdmin
done
# The head's autoscaler creates and deletes the worker VMs and gives them the worker account.
gcloud projects add-iam-policy-binding "$PROJECT" --member "serviceAccount:$head" \
  --role roles/compute.instanceAdmin.v1
gcloud iam service-accounts add-iam-policy-binding "$worker" --project "$PROJECT" \
  --member "serviceAccount:$head" --role roles/iam.serviceAccountUser

gcloud compute networks create t2i-ray --project "$PROJECT" --subnet-mode custom
gcloud compute networks subnets create t2i-ray --project "$PROJECT" --network t2i-ray \
  --region "$REGION" --range "$SUBNET_RANGE"
gcloud compute firewall-rules create t2i-ray-ssh --project "$PROJECT" --network t2i-ray \
  --direction INGRESS --allow tcp:22 --source-ranges "$MY_IP"
gcloud compute firewall-rules create t2i-ray-internal --project "$PROJECT" --network t2i-ray \
  --direction INGRESS --allow tcp,udp,icmp --source-ranges "$SUBNET_RANGE"
echo "done: service accounts $head, $worker; network t2i-ray ($SUBNET_RANGE in $REGION)."
echo "Create the Filestore share on the network t2i-ray and put its address in cluster-gcp.yaml."
