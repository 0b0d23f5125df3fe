mod build;
mod crash;
mod hostile;
mod pipeline;
pub mod remote;
mod report;
mod s3;
mod verify;
