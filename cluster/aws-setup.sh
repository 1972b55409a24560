#!/usr/bin/env bash
# One-time AWS setup for cluster.yaml (README, "Securing the cluster"). Not run from this
# repository (it needs AWS credentials); read it before running it.
#   BUCKET=my-bucket MY_IP=203.0.113.7/32 cluster/aws-setup.sh
# Makes: the IAM roles + instance profiles t2i-ray-head (launch/stop instances, the bucket) and
# t2i-ray-worker (the bucket only), from cluster/aws-*-policy.json with YOUR-BUCKET replaced; the
# security group t2i-ray-sg in the default VPC with two inbound rules: SSH from MY_IP and all
# traffic from the group itself (node to node). `ray up` reuses the group by name and keeps these
# rules (it adds its defaults only to a group without any).
set -euo pipefail
: "${BUCKET:?set BUCKET to the S3 bucket of --storage-path (name only, no s3://)}"
: "${MY_IP:?set MY_IP to the address range allowed to SSH in, e.g. 203.0.113.7/32}"
REGION="${REGION:-us-west-2}"
here="$(cd "$(dirname "$0")" && pwd)"
trust='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}'

for who in head worker; do
  role="t2i-ray-$who"
  aws iam create-role --role-name "$role" --assume-role-policy-document "$trust" >/dev/null
  aws iam put-role-policy --role-name "$role" --policy-name "$role-policy" \
    --policy-document "$(sed "s/YOUR-BUCKET/$BUCKET/g" "$here/aws-$who-policy.json")"
  aws iam create-instance-profile --instance-profile-name "$role" >/dev/null
  aws iam add-role-to-instance-profile --instance-profile-name "$role" --role-name "$role"
done
# Spot instances need EC2's service-linked role once per account (an error here means it exists).
aws iam create-service-linked-role --aws-service-name spot.amazonaws.com >/dev/null 2>&1 || true

vpc="$(aws ec2 describe-vpcs --region "$REGION" --filters Name=isDefault,Values=true \
  --query 'Vpcs[0].VpcId' --output text)"
sg="$(aws ec2 create-security-group --region "$REGION" --vpc-id "$vpc" --group-name t2i-ray-sg \
  --description "t2i-ray: SSH from MY_IP, node-to-node traffic" --query GroupId --output text)"
aws ec2 authorize-security-group-ingress --region "$REGION" --group-id "$sg" \
  --ip-permissions "IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=$MY_IP}]"
aws ec2 authorize-security-group-ingress --region "$REGION" --group-id "$sg" \
  --ip-permissions "IpProtocol=-1,UserIdGroupPairs=[{GroupId=$sg}]"
echo "done: instance profiles t2i-ray-head, t2i-ray-worker; security group $sg (t2i-ray-sg) in $vpc."
echo "The EFS file system's security group must allow NFS (2049) from $sg."
