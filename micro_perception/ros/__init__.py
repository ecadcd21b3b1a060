"""ROS 2 glue: message conversion, QoS, synchronisation and nodes. Algorithms never import this."""
